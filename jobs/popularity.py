"""spark-submit entry point for `hmrec popularity`.

    spark-submit --packages io.delta:delta-spark_2.13:4.0.0 \
        --conf spark.jars.ivy=$HOME/.cache/hmrec/ivy \
        jobs/popularity.py [the arguments of `hmrec popularity --help`]
"""
import sys

from hmrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["popularity", *sys.argv[1:]]))
