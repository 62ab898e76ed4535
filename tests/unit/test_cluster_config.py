"""The cluster stack's configuration, rendered without starting anything: one port plan, each
ClickHouse server its place in 2 shards x 2 replicas, each Kafka node the shared quorum, and the
single-node stack's files from the same templates."""

from __future__ import annotations

import socket
import stat
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from pipelines import cluster
from pipelines.config import ClusterLayout, Settings
from pipelines.stack.kafka_broker import format_kafka, kafka_service, render_kafka
from pipelines.stack.services import Service, StackError, ensure_port_free
from pipelines.store.clickhouse import render_clickhouse_config, render_cluster_config


@pytest.fixture()
def settings(tmp_path) -> Settings:
    passwords = (("writer", "w-secret"), ("analyst", "a-secret"), ("dashboard", "d-secret"))
    return replace(Settings.from_env(), state_dir=tmp_path, clickhouse_passwords=passwords)


def test_every_port_of_the_cluster_is_its_own_and_clear_of_the_single_node_stack(settings):
    ports = [port for _, port, _ in cluster._ports(settings)]
    assert len(ports) == len(set(ports)) == 1 + 3 * 2 + 4 * 3 + 3
    single_node = {19000, 18123, 19092, 19093}
    assert not single_node & set(ports)
    base = settings.cluster.port_base
    assert all(base < port < base + 300 for port in ports)


def test_the_whole_port_plan_moves_with_its_base():
    moved = ClusterLayout(port_base=31000)
    assert moved.zookeeper_port == 31181
    assert moved.kafka_bootstrap == "127.0.0.1:31091,127.0.0.1:31092,127.0.0.1:31093"
    assert [n.tcp_port for n in moved.clickhouse_nodes] == [31001, 31002, 31003, 31004]


def test_each_clickhouse_server_knows_its_shard_replica_zookeeper_root_and_both_clusters(settings, tmp_path):
    node = settings.cluster.clickhouse_nodes[1]
    own = cluster.server_settings(settings, node)
    path = render_cluster_config(own, node, tmp_path / node.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it carries the writer's password
    root = ET.parse(path).getroot()
    assert (root.findtext("macros/shard"), root.findtext("macros/replica")) == ("1", "clickhouse-s1r2")
    assert root.findtext("zookeeper/root") == "/viewcount"
    assert root.findtext("zookeeper/node/port") == str(settings.cluster.zookeeper_port)
    assert root.findtext("interserver_http_port") == str(node.interserver_port)
    shards = root.findall("remote_servers/viewcount/shard")
    assert [[r.findtext("port") for r in shard.findall("replica")] for shard in shards] == [
        ["29001", "29002"], ["29003", "29004"]]
    assert all(shard.findtext("internal_replication") == "true" for shard in shards)
    assert {r.findtext("user") for r in root.find("remote_servers").iter("replica")} == {"viewcount_writer"}
    each = root.findall("remote_servers/viewcount_servers/shard")
    assert [len(shard.findall("replica")) for shard in each] == [1, 1, 1, 1]
    assert root.findtext("distributed_ddl/path")


def test_a_cluster_server_has_the_single_node_users_on_its_own_ports_and_folder(settings, tmp_path):
    node = settings.cluster.clickhouse_nodes[3]
    home = tmp_path / node.name
    config = ET.parse(render_clickhouse_config(cluster.server_settings(settings, node), home=home)).getroot()
    assert (config.findtext("tcp_port"), config.findtext("http_port")) == (str(node.tcp_port), str(node.http_port))
    assert config.findtext("path") == f"{home.resolve()}/data/"
    users = ET.parse(home / "users.xml").getroot()
    assert {u.tag for u in users.find("users")} == {"viewcount_writer", "analyst", "dashboard", "default"}
    single = ET.parse(render_clickhouse_config(settings)).getroot()
    assert single.findtext("tcp_port") == "19000"
    assert single.findtext("path") == f"{(settings.state_dir / 'clickhouse').resolve()}/data/"


def test_kafka_nodes_share_a_fixed_quorum_and_keep_three_copies_the_single_node_one(settings):
    layout = settings.cluster
    service = cluster.kafka_services(settings)[2]
    properties = render_kafka(
        service, node_id=2, controller_quorum=f"controller.quorum.voters={layout.kafka_voters}",
        broker_address="127.0.0.1:29092", controller_address="127.0.0.1:29192", partitions=4,
        replication_factor=3, min_insync_replicas=2).read_text()
    assert "node.id=2\n" in properties
    assert "controller.quorum.voters=1@127.0.0.1:29191,2@127.0.0.1:29192,3@127.0.0.1:29193\n" in properties
    for line in ("default.replication.factor=3", "min.insync.replicas=2", "offsets.topic.replication.factor=3",
                 "transaction.state.log.replication.factor=3", "transaction.state.log.min.isr=2"):
        assert f"{line}\n" in properties
    assert f"log.dirs={service.home / 'data'}\n" in properties
    single = render_kafka(kafka_service(settings), node_id=1,
                          controller_quorum="controller.quorum.bootstrap.servers=127.0.0.1:19093",
                          broker_address="127.0.0.1:19092", controller_address="127.0.0.1:19093",
                          partitions=4).read_text()
    assert "offsets.topic.replication.factor=1\n" in single and "min.insync.replicas=1\n" in single


def test_a_taken_port_is_named_with_what_to_do():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        expected = rf"port {port} \(ZooKeeper\) is taken .* VIEWCOUNT_CLUSTER_PORT_BASE"
        with pytest.raises(StackError, match=expected):
            ensure_port_free(port, "ZooKeeper", cluster.MOVE_PORTS)


def test_each_clickhouse_server_of_the_cluster_inserts_through_distributed_synchronously_to_the_first_replica(
        settings, tmp_path):
    """The default profile (the writer's, and the one 18.16's Kafka engine inserts with) of a cluster
    server: a Distributed insert returns once its shards have the rows, and writes and reads go to
    each shard's first live replica; the single-node server's users.xml is left as it is."""
    node = settings.cluster.clickhouse_nodes[2]
    home = tmp_path / node.name
    render_cluster_config(cluster.server_settings(settings, node), node, home)
    override = home / "users.d" / "cluster.xml"
    profile = ET.parse(override).getroot().find("profiles/default")
    assert {child.tag: child.text for child in profile} == {
        "insert_distributed_sync": "1", "load_balancing": "in_order", "prefer_localhost_replica": "0"}
    single = render_clickhouse_config(settings).parent
    assert not (single / "users.d").exists()
    assert ET.parse(single / "users.xml").getroot().findtext("profiles/default/load_balancing") == "random"


def test_the_cluster_s_settings_point_every_viewcount_command_at_it_without_a_password(settings, monkeypatch):
    environment = cluster.environment(settings)
    assert environment == {
        "VIEWCOUNT_KAFKA_BOOTSTRAP": "127.0.0.1:29091,127.0.0.1:29092,127.0.0.1:29093",
        # Shard 1's first server, and the other three in turn when it refuses (clickhouse-driver's alt_hosts).
        "VIEWCOUNT_CLICKHOUSE_URL": "clickhouse://viewcount_writer@127.0.0.1:29001/viewcount"
                                    "?alt_hosts=127.0.0.1:29002,127.0.0.1:29003,127.0.0.1:29004",
        "VIEWCOUNT_CLICKHOUSE_HTTP_PORT": "29121",
        "VIEWCOUNT_CLICKHOUSE_CLUSTER": "viewcount",
        "VIEWCOUNT_CLICKHOUSE_SERVERS_CLUSTER": "viewcount_servers",
        "VIEWCOUNT_FLINK_CLUSTER": "127.0.0.1:29081",
        "VIEWCOUNT_PARALLELISM": "2",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    read = Settings.from_env(state_dir=settings.state_dir, clickhouse_passwords=settings.clickhouse_passwords)
    assert read == cluster.cluster_settings(replace(settings, clickhouse_url=read.clickhouse_url))
    assert read.clickhouse.password == "w-secret"  # the stack's generated one, as on one server
    assert read.clickhouse.alt_hosts == ("127.0.0.1:29002", "127.0.0.1:29003", "127.0.0.1:29004")
    assert read.clickhouse_as("dashboard").alt_hosts == read.clickhouse.alt_hosts
    # A server of its own (the tests that kill one): that server or an error, never another.
    assert cluster.server_settings(settings, settings.cluster.clickhouse_nodes[1]).clickhouse.alt_hosts == ()
    assert all("secret" not in line for line in cluster.env(settings))


def test_a_clickhouse_url_names_other_servers_to_try_and_refuses_what_it_does_not_know():
    from pipelines.config import ClickHouseTarget

    target = ClickHouseTarget.from_url("clickhouse://w:pw@10.0.0.1:9000/night?alt_hosts=10.0.0.2:9000,10.0.0.3:9440")
    assert (target.host, target.port, target.database) == ("10.0.0.1", 9000, "night")
    assert target.alt_hosts == ("10.0.0.2:9000", "10.0.0.3:9440")
    assert ClickHouseTarget.from_url(target.url()) == target
    assert ClickHouseTarget.from_url(target.url("other")).database == "other"
    assert "or 10.0.0.2:9000, 10.0.0.3:9440" in target.describe()
    assert ClickHouseTarget.from_url("clickhouse://w@h:1/d").alt_hosts == ()
    with pytest.raises(ValueError, match="must be host:port"):
        ClickHouseTarget.from_url("clickhouse://w@h:1/d?alt_hosts=h2")
    with pytest.raises(ValueError, match="unknown option"):
        ClickHouseTarget.from_url("clickhouse://w@h:1/d?secure=1")


def test_a_kafka_node_formats_with_a_cluster_id_that_begins_with_a_dash(tmp_path):
    """Kafka's storage tool, for real: a cluster id is base64 and 1 in 64 begin with "-" (CI, 7 Dec:
    `-gz-RDedRTeNfvaYdMDM7w` refused as an option, so the cluster did not come up)."""
    node = Service("kafka-format", tmp_path / "kafka", "kafka.Kafka")
    properties = render_kafka(node, node_id=1, controller_quorum="controller.quorum.bootstrap.servers=127.0.0.1:1",
                              broker_address="127.0.0.1:2", controller_address="127.0.0.1:1", partitions=1)
    format_kafka(Settings.from_env(), properties, "-gz-RDedRTeNfvaYdMDM7w", standalone=True)
    assert "cluster.id=-gz-RDedRTeNfvaYdMDM7w" in (node.home / "data" / "meta.properties").read_text()
