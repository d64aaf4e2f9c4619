-- The Kafka source of the Flink job in production (UNTESTED here: no Kafka broker, and the
-- connector jar is not bundled with PyFlink and Maven is unreachable on the dev machine).
-- Replace the `landing` table of pipelines/flink/sql.py with this DDL; everything downstream
-- (parse, per-tenant windows and watermarks, Python stage) is unchanged. Needs
-- flink-sql-connector-kafka (see README.md) in /opt/flink/lib or via `pipeline.jars`.
CREATE TEMPORARY TABLE landing (
  line BYTES,                                        -- the record's bytes, parsed by PARSE_TELEMETRY
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
