"""The one partitions definition every shard-level stage shares: shards of the source pool,
registered by `pool/source_manifest` from the planned inputs."""

from dagster import DynamicPartitionsDefinition

shards = DynamicPartitionsDefinition(name="shards")
