"""hmrec: two-tower fashion recommendations as Spark batch jobs over Delta tables."""
from setuptools import find_packages, setup

setup(
    name="hmrec",
    version="0.1.0",
    description="Recommendation pipeline for fashion retail: Spark + Delta ETL, "
    "Petastorm-fed PyTorch two-tower model, FAISS batch scoring.",
    packages=find_packages(include=["hmrec", "hmrec.*"]),
    package_data={"hmrec": ["conf/*.yaml", "conf/*.properties"]},
    python_requires=">=3.10,<3.13",
    install_requires=[
        # petastorm 0.13.1 imports pyarrow.filesystem and the legacy
        # ParquetDataset, both removed in pyarrow 15; numpy and pandas follow
        # what pyarrow 14 was built against.
        "pyspark>=4.0,<4.1",
        "delta-spark>=4.0,<4.1",
        "petastorm==0.13.1",
        "pyarrow==14.0.2",
        "numpy<2",
        "pandas<2.3",
        "torch>=2.4",
        "faiss-cpu>=1.8",
        "mlflow>=2.16",
        "pyyaml>=6",
        "psutil>=5.9",
        "matplotlib>=3.7",
        # Reads Delta tables without a JVM, so `hmrec recommend` answers fast.
        "deltalake>=1.0",
        # The ranking stage's gradient-boosted ranker (lambdarank), trained on the driver.
        "lightgbm>=4.7,<4.8",
        # The ranker's trees compiled to native code: scores every candidate several times faster than
        # LightGBM's predict (hmrec/rank/compiled.py). lleaves 1.3 builds with llvmlite's legacy pass
        # manager, which llvmlite 0.45 removed.
        "lleaves>=1.3,<1.4",
        "llvmlite>=0.43,<0.45",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "nbformat>=5", "nbclient>=0.10", "ipykernel>=6"],
        # `jupyter lab notebooks/`, the command `hmrec run` prints to open the notebooks
        "notebooks": ["jupyterlab>=4"],
        # `python -m hmrec.bench rankers` compares the served LightGBM ranker with XGBoost's on the same rows
        "bench": ["xgboost>=3.2,<3.3"],
    },
    entry_points={"console_scripts": ["hmrec=hmrec.cli:main"]},
)
