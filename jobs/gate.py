"""spark-submit entry point for `hmrec gate`.

    spark-submit --packages io.delta:delta-spark_2.13:4.0.0 \
        --conf spark.jars.ivy=$HOME/.cache/hmrec/ivy \
        jobs/gate.py [the arguments of `hmrec gate --help`]
"""
import sys

from hmrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["gate", *sys.argv[1:]]))
