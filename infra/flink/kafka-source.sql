-- The Kafka source of the Flink job in production (UNTESTED here: no Kafka broker, and the
-- connector jar is not bundled with PyFlink and Maven is unreachable on the dev machine).
-- The landing directory is a DataStream FileSource of (line BYTES, path STRING) rows
-- (`LandingLines`, `_parsed_lines` in pipelines/flink/job.py). To read Kafka instead, create
-- this table in a StreamTableEnvironment over the job's environment and hand
-- `t_env.to_data_stream(t_env.sql_query("SELECT line, path FROM landing"))._j_data_stream`
-- to the parse (`.flatMap(ParseLines())`) in place of the FileSource's stream; everything
-- downstream (parse, per-tenant windows and watermarks, Python stage) is unchanged. Needs
-- flink-sql-connector-kafka (see README.md) in /opt/flink/lib or via `pipeline.jars`.
CREATE TEMPORARY TABLE landing (
  line BYTES,                                        -- the record's bytes, parsed by ParseLines
  path AS 'kafka',                                   -- dead letters name the source
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL
) WITH (
  'connector' = 'kafka',
  'topic' = 'aura.telemetry',
  'properties.bootstrap.servers' = 'kafka:9092',
  'properties.group.id' = 'aura-flink',
  'scan.startup.mode' = 'group-offsets',
  'properties.auto.offset.reset' = 'earliest',
  'format' = 'raw'
);
-- Each tenant's watermark is kept after the parse (TenantWindower, pipelines/flink/job.py);
-- a tenant without traffic closes its windows after tenant_idle_timeout_s.
-- Key the topic by tenant so that one tenant's records stay in order in one partition; the
-- source then reads partitions in parallel (unlike the landing directory, read by one reader).
