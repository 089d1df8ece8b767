"""spark-submit entry point for `hmrec card`.

    spark-submit --packages io.delta:delta-spark_2.13:4.0.0 \
        --conf spark.jars.ivy=$HOME/.cache/hmrec/ivy \
        jobs/card.py [the arguments of `hmrec card --help`]
"""
import sys

from hmrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["card", *sys.argv[1:]]))
