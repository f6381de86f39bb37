"""Ready pipelines: each folder runs with ``python -m workflows.NAME ...`` from the repository
root, or with ``taskflow run workflows/NAME/pipeline.yaml -i IN.zarr -o OUT.zarr``; each has a
README with its commands. Copy one to start your own."""
