//! Broker and Redis outages (`SCENARIOS.md` S3, S4), on instances each test owns.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use flotilla_shared::job::{event_id, EventType, JobStatus};
use flotilla_tests::{
    eventually,
    services::{BlackholeProxy, OwnRabbit, OwnRedis},
    sim_job, EnvOptions, TestEnv, TestReceiver,
};

async fn ready(addr: std::net::SocketAddr) -> bool {
    matches!(reqwest::get(format!("http://{addr}/readyz")).await, Ok(r) if r.status().is_success())
}

/// S3: an idle worker survives two broker restarts without a process restart: `/readyz` is
/// false while the broker is away, and a job submitted afterwards is done within 30 s.
#[tokio::test]
async fn s3_broker_restarts_twice_and_the_fleet_recovers_by_itself() {
    let dir = flotilla_tests::bin_dir()
        .join("test-envs")
        .join(format!("rabbit-{}", std::process::id()));
    let rabbit = OwnRabbit::start(&dir).await;
    let mut env = TestEnv::with_options(
        "s3",
        EnvOptions {
            amqp_url: Some(rabbit.url(2)),
            ..EnvOptions::default()
        },
    )
    .await;
    let client = env.start_producer().await;
    let w = env.start_worker(&[]).await;
    let (worker_addr, producer_addr) = (
        env.workers[w].addr,
        env.producer.as_ref().expect("producer").addr,
    );
    let pid = env.workers[w].child.id();

    for round in 0..2 {
        rabbit.stop_app();
        assert!(
            eventually(Duration::from_secs(10), || async {
                !ready(worker_addr).await
            })
            .await,
            "worker /readyz stays true with the broker down (round {round})"
        );
        assert!(
            eventually(Duration::from_secs(10), || async {
                !ready(producer_addr).await
            })
            .await
        );
        rabbit.start_app().await;
    }
    let back = std::time::Instant::now();
    // The API answers 503 until its link is back; a caller retries.
    let submitted = std::sync::Mutex::new(None);
    let ok = eventually(Duration::from_secs(30), || async {
        match client.submit(&sim_job(10, None), Some("s3-job")).await {
            Ok(s) => {
                *submitted.lock().expect("lock") = Some(s.response.id);
                true
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(ok, "{}", env.logs());
    let id = submitted.lock().expect("lock").clone().expect("id");
    let job = client
        .wait(&id, Duration::from_secs(30))
        .await
        .expect("job ends");
    assert_eq!(job.status, JobStatus::Succeeded, "{}", env.logs());
    assert!(
        back.elapsed() < Duration::from_secs(30),
        "done within 30 s of the broker's return"
    );
    assert!(env.workers[w].alive());
    assert_eq!(env.workers[w].child.id(), pid, "no process restart");
    assert!(ready(worker_addr).await);
    drop(env);
    drop(rabbit);
}

/// S3 variant: the network path drops every packet without a FIN. Heartbeats (2 s here) reveal
/// it; the worker reconnects when the path heals and the job submitted meanwhile completes.
#[tokio::test]
async fn s3_silent_network_loss_is_detected_by_heartbeats() {
    let proxy = BlackholeProxy::start("127.0.0.1:5672".parse().expect("addr")).await;
    let worker_url = format!("amqp://guest:guest@{}/%2f?heartbeat=2", proxy.addr);
    let mut env = TestEnv::new("s3drop").await;
    let client = env.start_producer().await;
    // Only the worker goes through the failing path.
    let w = env.spawn_worker_with_env(&[], &[("FLOTILLA_AMQP_URL", &worker_url)]);
    let addr = env.workers[w].addr;
    assert!(
        eventually(Duration::from_secs(30), || async { ready(addr).await }).await,
        "{}",
        env.logs()
    );

    proxy.set_dropping(true);
    let lost_at = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(12), || async { !ready(addr).await }).await,
        "loss not noticed within a few heartbeat intervals; {}",
        env.logs()
    );
    assert!(lost_at.elapsed() < Duration::from_secs(12));
    let id = client
        .submit(&sim_job(10, None), None)
        .await
        .expect("submit")
        .response
        .id;
    proxy.set_dropping(false);
    let job = client
        .wait(&id, Duration::from_secs(45))
        .await
        .expect("job ends");
    assert_eq!(job.status, JobStatus::Succeeded, "{}", env.logs());
    assert!(env.workers[w].alive());
}

/// S4: Redis goes away while a job runs and comes back later: nothing is acked or sent before
/// the result is stored; afterwards exactly one result and one webhook; a status query never
/// shows `succeeded` without output.
#[tokio::test]
async fn s4_redis_outage_mid_job_gives_one_result_and_one_webhook() {
    let dir = flotilla_tests::bin_dir()
        .join("test-envs")
        .join(format!("redis-{}", std::process::id()));
    let mut redis = OwnRedis::start(&dir).await;
    let mut env = TestEnv::with_options(
        "s4",
        EnvOptions {
            redis_url: Some(redis.url()),
            ..EnvOptions::default()
        },
    )
    .await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    let receiver = TestReceiver::start(0).await;
    let id = client
        .submit(&sim_job(3000, Some(receiver.hook_url())), None)
        .await
        .expect("submit")
        .response
        .id;

    // Watch every status a caller could see.
    let anomalies = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (client, id, anomalies) = (client.clone(), id.clone(), anomalies.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(job) = client.get(&id).await {
                    if job.status == JobStatus::Succeeded && job.output.is_none() {
                        anomalies.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(20), || async {
            matches!(env.store.get(&id).await, Ok(Some(j)) if j.job.status == JobStatus::Running)
        })
        .await
    );
    redis.kill();
    // The outage outlasts the model call (3 s) and the worker's bounded write retries (~3 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        receiver.hits_for(&id).is_empty(),
        "no webhook before the result is stored"
    );
    redis.restart().await;

    let job = client
        .wait(&id, Duration::from_secs(60))
        .await
        .expect("job ends");
    assert_eq!(job.status, JobStatus::Succeeded, "{}", env.logs());
    assert_eq!(job.output.as_ref().expect("output")["latency_ms"], 3000);
    assert!(
        eventually(Duration::from_secs(20), || async {
            !receiver.hits_for(&id).is_empty()
        })
        .await
    );
    assert!(env.drained(Duration::from_secs(10)).await);
    watcher.abort();
    let hits = receiver.hits_for(&id);
    assert_eq!(hits.len(), 1, "one webhook: {hits:?}");
    assert_eq!(hits[0].webhook_id, event_id(&id, EventType::Succeeded));
    assert_eq!(
        anomalies.load(Ordering::SeqCst),
        0,
        "never succeeded without output"
    );
}

/// S4 variant: Redis closes idle connections (`timeout 1`); after idling, the first command is
/// retried on a fresh connection and the job succeeds.
#[tokio::test]
async fn s4_idle_redis_connections_closed_by_the_server_are_replaced() {
    let dir = flotilla_tests::bin_dir()
        .join("test-envs")
        .join(format!("redis-idle-{}", std::process::id()));
    let redis = OwnRedis::start(&dir).await;
    let c = redis::Client::open(redis.url()).expect("client");
    let mut conn = c.get_multiplexed_async_connection().await.expect("conn");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("timeout")
        .arg("1")
        .query_async(&mut conn)
        .await
        .expect("config");
    let mut env = TestEnv::with_options(
        "s4idle",
        EnvOptions {
            redis_url: Some(redis.url()),
            ..EnvOptions::default()
        },
    )
    .await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    // Idle past the server's timeout: every connection is closed by Redis.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let id = client
        .submit(&sim_job(10, None), None)
        .await
        .expect("first submit after idling")
        .response
        .id;
    let job = client
        .wait(&id, Duration::from_secs(30))
        .await
        .expect("job ends");
    assert_eq!(job.status, JobStatus::Succeeded, "{}", env.logs());
}
