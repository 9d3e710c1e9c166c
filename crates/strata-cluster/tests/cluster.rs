//! Redis Cluster creation, topology queries and failover against real processes.

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{pid_exists, pid_running, ping};
use strata_cluster::{Detached, RedisCluster};

#[test]
fn three_masters_three_replicas_are_healthy_and_dropped_cleanly() {
    let t = Instant::now();
    let cluster = RedisCluster::start(3, 1).expect("start cluster");
    eprintln!("cluster 3+3 start (create + healthy): {:?}", t.elapsed());

    assert_eq!(cluster.nodes().len(), 6);
    assert_eq!(cluster.seed_urls().len(), 6);
    let masters = cluster.master_indices().expect("masters");
    let replicas = cluster.replica_indices().expect("replicas");
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    let all: HashSet<usize> = masters.iter().chain(&replicas).copied().collect();
    assert_eq!(all.len(), 6);

    // Every slot is served by one of the masters, and all three serve some.
    let mut serving = HashSet::new();
    for slot in (0..16384u16).step_by(97).chain([16383]) {
        let m = cluster.node_for_slot(slot).expect("slot owner");
        assert!(masters.contains(&m), "slot {slot} served by non-master {m}");
        serving.insert(m);
    }
    assert_eq!(serving.len(), 3);
    assert!(cluster.node_for_slot(16384).is_err());

    // Writing to the owning master works; another master answers MOVED.
    let owner = cluster.node_for_key(b"user:42").expect("owner");
    // CLUSTER KEYSLOT foo is 12182 (Redis documentation); hash tags pin keys together.
    assert_eq!(cluster.key_slot(b"foo").expect("slot"), 12182);
    assert_eq!(cluster.key_slot(b"{user42}.a").expect("slot"), cluster.key_slot(b"user42").expect("slot"));
    assert_eq!(cluster.node_for_slot(cluster.key_slot(b"user:42").expect("slot")).expect("owner"), owner);
    let mut con = cluster.nodes()[owner].connection().expect("connect");
    let () = redis::cmd("SET").arg("user:42").arg("x").query(&mut con).expect("SET on owner");
    let other = *masters.iter().find(|&&m| m != owner).expect("another master");
    let mut con = cluster.nodes()[other].connection().expect("connect");
    let err = redis::cmd("GET").arg("user:42").query::<Option<String>>(&mut con).expect_err("MOVED");
    assert!(err.to_string().to_lowercase().contains("moved"), "{err}");

    let conf = std::fs::read_to_string(cluster.nodes()[0].config_path()).expect("conf");
    assert!(conf.contains("\ncluster-enabled yes\n"));
    assert!(conf.contains(&format!("\ncluster-port {}\n", cluster.nodes()[0].bus_port().expect("bus port"))));

    let pids: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid()).collect();
    assert_eq!(pids.len(), 6);
    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    for pid in pids {
        assert!(!pid_exists(pid), "pid {pid} survived drop");
    }
    assert!(!dir.exists());
}

#[test]
fn killing_a_master_promotes_its_replica() {
    let mut cluster =
        RedisCluster::builder().masters(3).replicas(1).node_timeout_ms(1000).start().expect("start cluster");
    let old = cluster.node_for_slot(0).expect("owner of slot 0");
    let killed_at = Instant::now();
    cluster.node_mut(old).kill().expect("kill master");
    cluster.wait_healthy(Duration::from_secs(30)).expect("healthy after failover");
    eprintln!("master kill -> healthy again: {:?}", killed_at.elapsed());
    let new = cluster.node_for_slot(0).expect("new owner");
    assert_ne!(new, old);
    let masters = cluster.master_indices().expect("masters");
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert!(!masters.contains(&old));
    assert_eq!(cluster.replica_indices().expect("replicas").len(), 2);

    // The old master comes back as a replica of the promoted node.
    let t = Instant::now();
    cluster.node_mut(old).restart().expect("restart old master");
    cluster.wait_healthy(Duration::from_secs(30)).expect("healthy after rejoin");
    eprintln!("old master restart -> healthy as replica: {:?}", t.elapsed());
    assert!(cluster.replica_indices().expect("replicas").contains(&old));
    assert_eq!(cluster.node_for_slot(0).expect("owner"), new);
}

#[test]
fn pausing_a_master_fails_over_and_it_rejoins_as_replica() {
    let cluster = RedisCluster::builder().node_timeout_ms(1000).start().expect("start cluster");
    let old = cluster.node_for_slot(8000).expect("owner");
    let node = &cluster.nodes()[old];
    node.pause().expect("pause");
    assert!(ping(node, Duration::from_millis(200)).is_err());
    let t = Instant::now();
    cluster.wait_healthy(Duration::from_secs(30)).expect("healthy while paused");
    eprintln!("master pause -> healthy: {:?}", t.elapsed());
    assert_ne!(cluster.node_for_slot(8000).expect("owner"), old);
    node.resume().expect("resume");
    cluster.wait_healthy(Duration::from_secs(30)).expect("healthy after resume");
    assert!(cluster.replica_indices().expect("replicas").contains(&old));
}

#[test]
fn manual_failover_and_reshard() {
    let cluster = RedisCluster::builder().masters(3).replicas(1).start().expect("start cluster");
    let replica = cluster.replica_indices().expect("replicas")[0];
    cluster.manual_failover(replica, Duration::from_secs(15)).expect("manual failover");
    cluster.wait_healthy(Duration::from_secs(30)).expect("healthy");
    assert!(cluster.master_indices().expect("masters").contains(&replica));

    let from = cluster.node_for_slot(0).expect("owner of slot 0");
    let to = *cluster.master_indices().expect("masters").iter().find(|&&m| m != from).expect("other master");
    let t = Instant::now();
    cluster.reshard(from, to, 10).expect("reshard");
    cluster.wait_healthy(Duration::from_secs(30)).expect("healthy");
    eprintln!("reshard 10 slots: {:?}", t.elapsed());
    assert_eq!(cluster.node_for_slot(0).expect("owner"), to);
}

#[test]
fn password_cluster_without_replicas_can_be_detached_and_stopped() {
    let base = tempfile::tempdir().expect("tempdir");
    let dir = base.path().join("cluster");
    let cluster = RedisCluster::builder()
        .replicas(0)
        .password("pw")
        .dir(&dir)
        .own_process_group(true)
        .start()
        .expect("start cluster");
    assert_eq!(cluster.nodes().len(), 3);
    assert_eq!(cluster.master_indices().expect("masters").len(), 3);
    assert!(cluster.replica_indices().expect("replicas").is_empty());
    assert!(cluster.seed_urls().iter().all(|u| u.starts_with("redis://default:pw@")));
    let log = std::fs::read_to_string(dir.join("cluster-create.log")).expect("log");
    assert!(log.contains("All 16384 slots covered"), "{log}");
    assert!(!log.contains("pw"), "the password must not reach redis-cli's command line");

    let detached = cluster.detach().expect("detach");
    assert_eq!(detached.pids().len(), 3);
    assert!(detached.pids().iter().all(|&p| pid_running(p)));
    let loaded = Detached::load(&dir).expect("load");
    assert_eq!(loaded.urls(), detached.urls());
    loaded.stop().expect("stop");
    assert!(detached.pids().iter().all(|&p| !pid_running(p)));

    // The directory now holds an old cluster: starting a new one there is refused.
    let err = RedisCluster::builder().replicas(0).dir(&dir).start().expect_err("dir in use");
    assert_eq!(err.kind(), strata_cluster::ErrorKind::InvalidConfig, "{err}");
}

#[test]
fn cluster_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<RedisCluster>();
    check::<strata_cluster::RedisNode>();
    check::<strata_cluster::RedisServer>();
    check::<strata_cluster::SentinelSetup>();
    check::<strata_cluster::ClusterError>();
}

#[test]
fn base_port_in_use_is_reported() {
    // A fixed-port range that leaves room for the bus ports (+10000).
    let (listener, base) = (20000u16..30000)
        .step_by(13)
        .find_map(|p| TcpListener::bind(("127.0.0.1", p)).ok().map(|l| (l, p)))
        .expect("a bindable port");
    let err = RedisCluster::builder().base_port(base).start().expect_err("port is taken");
    assert!(err.is_port_in_use(), "{err}");
    drop(listener);
}

#[test]
fn too_few_masters_is_rejected() {
    let err = RedisCluster::start(1, 0).expect_err("redis-cli needs 3 masters");
    assert_eq!(err.kind(), strata_cluster::ErrorKind::InvalidConfig);
}
