"""spark-submit entry point for `hmrec choose`.

    spark-submit --packages io.delta:delta-spark_2.13:4.0.0 \
        --conf spark.jars.ivy=$HOME/.cache/hmrec/ivy \
        jobs/choose.py [the arguments of `hmrec choose --help`]
"""
import sys

from hmrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["choose", *sys.argv[1:]]))
