"""spark-submit entry point for `hmrec candidates`.

    spark-submit --packages io.delta:delta-spark_2.13:4.0.0 \
        --conf spark.jars.ivy=$HOME/.cache/hmrec/ivy \
        jobs/candidates.py [the arguments of `hmrec candidates --help`]
"""
import sys

from hmrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["candidates", *sys.argv[1:]]))
