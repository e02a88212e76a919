# Databricks notebook source
# MAGIC %md
# MAGIC # Fruits! on Azure Databricks
# MAGIC
# MAGIC Runs the `fruits` package step by step on images in a Unity Catalog volume (EU region) and shows the
# MAGIC report and plots. Every step is a call into the package; this notebook holds no logic of
# MAGIC its own, so what it does is exactly what `fruits run` and the bundle's job do.
# MAGIC
# MAGIC The bundle runs it as the `fruits_notebook` job on a job cluster that ends with the run;
# MAGIC no all-purpose cluster is left idling.
# MAGIC Storage access is your Unity Catalog grants on the volume (READ VOLUME, WRITE VOLUME):
# MAGIC no storage key, no secret; never paste a key into a notebook.

# COMMAND ----------

# MAGIC %md
# MAGIC ## 1. Parameters
# MAGIC Run as the bundle's `fruits_notebook` job, the job installs the project's wheel and fills
# MAGIC these widgets from its parameters (the bundle's `input` and a `runs/notebook` output in
# MAGIC your volume). On compute you attach yourself, install the wheel that
# MAGIC `databricks bundle deploy` uploaded first (`%pip install <artifact path>/.internal/fruits-<version>-py3-none-any.whl`,
# MAGIC the artifact path of your target as `databricks bundle summary` shows it), then fill the
# MAGIC widgets with your volume's paths.

# COMMAND ----------

dbutils.widgets.text("input", "", "Images (/Volumes/<catalog>/<schema>/<volume>/...)")
dbutils.widgets.text("output", "", "Output folder (/Volumes/...)")
dbutils.widgets.dropdown("pca_variance", "0.95", ["0.90", "0.95", "0.99"], "PCA variance")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 2. Look at the input
# MAGIC Listing only (no image bytes are read): how many images per split and class, listed
# MAGIC by the same reader the run will use.

# COMMAND ----------

from fruits.config import PipelineConfig, ReduceConfig
from fruits.storage.plan import plan_storage

cfg = PipelineConfig(
    input=dbutils.widgets.get("input"),
    output=dbutils.widgets.get("output"),
    storage="hadoop",  # Spark lists the volume on the executors, as dbfs:/Volumes/...
    reduce=ReduceConfig(variance=float(dbutils.widgets.get("pca_variance"))),
)
# The run's own reader choice: a volume is listed by Spark as dbfs:/Volumes/..., not walked here.
plan = plan_storage(spark, cfg.storage, [cfg.input], cfg.output)
ingested = plan.read_images(spark, cfg.input, extensions=cfg.extensions, max_file_bytes=cfg.max_file_bytes)
display(ingested.files.groupBy("split", "label").count().orderBy("split", "label"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 3. Run the pipeline
# MAGIC Featurise (EfficientNet-Lite0, broadcast once, cached per worker), quarantine bad files,
# MAGIC scaler + PCA fitted on Training, classifier evaluated on Test, outputs staged then published.

# COMMAND ----------

from fruits.pipeline import run_pipeline

result = run_pipeline(cfg, spark=spark)
print(f"published to {result.output}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 4. Report

# COMMAND ----------

import json

summary_keys = ["images_total", "images_ok", "images_quarantined", "classes", "pca_k",
                "pca_explained_variance", "accuracy", "macro_f1", "images_per_second"]
display(spark.createDataFrame([(k, json.dumps(result.report.get(k))) for k in summary_keys], "metric string, value string"))
print(json.dumps(result.report["stage_seconds"], indent=2))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 5. Plots

# COMMAND ----------

from IPython.display import Image, display as show

for plot in spark.read.format("binaryFile").load(f"{result.output}/plots/*.png").collect():
    print(plot.path.rsplit("/", 1)[-1])
    show(Image(data=bytes(plot.content)))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 6. Outputs
# MAGIC `images.parquet` (features and PCA per image), `pca.csv`, `quarantine.csv`, `models/`.

# COMMAND ----------

display(spark.read.parquet(f"{result.output}/images.parquet").select("path", "label", "split", "pca").limit(20))
display(spark.read.parquet(f"{result.output}/quarantine.parquet"))
