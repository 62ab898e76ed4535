-- The servers of one cluster as this server's remote_servers lists them: shard, replica (in the order
-- the Distributed tables try them), host and native port.
SELECT shard_num, replica_num, host_name, port
FROM system.clusters
WHERE cluster = %(cluster)s
ORDER BY shard_num, replica_num
