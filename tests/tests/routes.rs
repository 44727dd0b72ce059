//! Model routes end to end: OpenAI-compatible backends (a fake server started by each test),
//! fallback along the chain, `served_by` and `route_path` on the job.

use std::time::Duration;

use flotilla_shared::job::{ErrorKind, JobRequest, JobStatus, StepOutcome};
use flotilla_tests::{
    fake_openai::{FakeOpenAi, Mode},
    job, listed_model, EnvOptions, TestEnv,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// Options whose config has `routes` (TOML) after the default `[jobs]` lines.
fn with_routes(routes: &str) -> EnvOptions {
    let mut opts = EnvOptions::default();
    opts.jobs_toml = format!("{}max_attempts = 3\n{routes}\n", opts.jobs_toml);
    opts
}

fn openai_backend(route: &str, name: &str, base_url: &str, extra: &str) -> String {
    format!(
        "[[routes.{route}.backends]]\nname = \"{name}\"\ntype = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"upstream-{name}\"\ntimeout_s = 1\n{extra}\n"
    )
}

fn chat(text: &str) -> JobRequest {
    JobRequest {
        params: Some(json!({"temperature": 0.2, "max_tokens": 16})),
        ..job(
            "chat",
            json!({"messages": [{"role": "user", "content": text}]}),
            None,
        )
    }
}

fn path(job: &flotilla_shared::job::Job) -> Vec<(String, StepOutcome)> {
    job.route_path
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.backend, s.outcome))
        .collect()
}

#[tokio::test]
async fn chat_job_maps_to_the_openai_shapes_and_records_usage() {
    let fake = FakeOpenAi::start(Mode::Ok("Bonjour".into())).await;
    let routes = format!(
        "{}{}",
        openai_backend(
            "chat",
            "vllm",
            &fake.base_url,
            "api_key_env = \"FAKE_LLM_KEY\""
        ),
        openai_backend("embed", "emb", &fake.base_url, "endpoint = \"embeddings\"")
    );
    let mut env = TestEnv::with_options("routes-chat", with_routes(&routes)).await;
    let client = env.start_producer().await;
    env.spawn_worker_with_env(&[], &[("FAKE_LLM_KEY", "sk-test-secret-123")]);

    let id = flotilla_tests::submit_id(&client, &chat("Say hello in French")).await;
    let done = client.wait(&id, WAIT).await.expect("job ends");
    assert_eq!(done.status, JobStatus::Succeeded, "{}", env.logs());
    let out = done.output.clone().expect("output");
    assert_eq!(out["content"], "Bonjour");
    assert_eq!(out["finish_reason"], "stop");
    assert_eq!(done.usage, json!({"input_tokens": 12, "output_tokens": 3}));
    assert_eq!(done.served_by.as_deref(), Some("vllm"));
    // The model call continues the job's trace.
    let sent = fake.traceparents()[0]
        .clone()
        .expect("traceparent on the model call");
    let trace = flotilla_shared::trace::TraceParent::parse(&sent).expect("valid");
    assert_eq!(Some(trace.trace_id_hex()), done.trace_id);
    assert_eq!(path(&done), [("vllm".to_string(), StepOutcome::Ok)]);

    let reqs = fake.requests();
    let (body, auth) = &reqs[0];
    assert_eq!(body["model"], "upstream-vllm");
    assert_eq!(body["messages"][0]["content"], "Say hello in French");
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["max_tokens"], 16);
    assert_eq!(auth.as_deref(), Some("Bearer sk-test-secret-123"));

    let emb = JobRequest {
        ..job("embed", json!({"input": ["a", "b"]}), None)
    };
    let id = flotilla_tests::submit_id(&client, &emb).await;
    let done = client.wait(&id, WAIT).await.expect("job ends");
    assert_eq!(done.status, JobStatus::Succeeded, "{}", env.logs());
    let out = done.output.expect("output");
    assert_eq!(out["embeddings"], json!([[0.5, 0.0], [0.5, 1.0]]));
    assert_eq!(done.usage["input_tokens"], 4);

    // The route is validated at the API with the OpenAI shapes.
    let Err(bad) = client
        .submit(&job("chat", json!({"text": "x"}), None), None)
        .await
    else {
        panic!("a chat route takes messages");
    };
    assert_eq!(bad.status().map(|s| s.as_u16()), Some(422), "{bad}");
    // The key never reaches a log.
    assert!(!env.logs().contains("sk-test-secret-123"));
    // GET /v1/models lists the route and its backends.
    let route = listed_model(&client, "chat").await;
    assert_eq!(route["backends"][0]["name"], "vllm");
    assert!(
        !route.to_string().contains(&fake.base_url),
        "base URLs stay private"
    );
}

/// A primary failing as `mode` (or unreachable at `primary_url`), a healthy secondary.
async fn falls_back(
    test: &str,
    primary: &FakeOpenAi,
    primary_url: &str,
) -> Vec<(String, StepOutcome)> {
    let secondary = FakeOpenAi::start(Mode::Ok("from secondary".into())).await;
    let routes = format!(
        "{}{}",
        openai_backend("chat", "primary", primary_url, ""),
        openai_backend("chat", "secondary", &secondary.base_url, "")
    );
    let mut env = TestEnv::with_options(test, with_routes(&routes)).await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    let id = flotilla_tests::submit_id(&client, &chat("hi")).await;
    let done = client.wait(&id, WAIT).await.expect("job ends");
    assert_eq!(done.status, JobStatus::Succeeded, "{}", env.logs());
    assert_eq!(
        done.output.as_ref().expect("output")["content"],
        "from secondary"
    );
    assert_eq!(done.served_by.as_deref(), Some("secondary"));
    assert_eq!(done.attempts, 1, "the fallback serves the same attempt");
    assert!(primary.calls() >= 1);
    let text = flotilla_tests::scrape(env.workers[0].addr).await;
    let handed = flotilla_tests::metric(
        &text,
        "flotilla_fallbacks_total",
        &[("route", "chat"), ("from", "primary"), ("to", "secondary")],
    );
    assert_eq!(handed, 1.0, "{text}");
    path(&done)
}

#[tokio::test]
async fn fallback_when_the_primary_returns_503() {
    let primary = FakeOpenAi::start(Mode::Status(503)).await;
    let p = falls_back("routes-503", &primary, &primary.base_url.clone()).await;
    assert_eq!(
        p,
        [
            ("primary".to_string(), StepOutcome::Transient),
            ("secondary".to_string(), StepOutcome::Ok)
        ]
    );
}

#[tokio::test]
async fn fallback_when_the_primary_times_out() {
    let primary = FakeOpenAi::start(Mode::Slow(Duration::from_secs(30), "late".into())).await;
    let p = falls_back("routes-slow", &primary, &primary.base_url.clone()).await;
    assert_eq!(
        p,
        [
            ("primary".to_string(), StepOutcome::Timeout),
            ("secondary".to_string(), StepOutcome::Ok)
        ]
    );
}

#[tokio::test]
async fn fallback_when_the_primary_drops_the_connection() {
    let primary = FakeOpenAi::start(Mode::Ok("unused".into())).await;
    let p = falls_back("routes-drop", &primary, &primary.drop_url.clone()).await;
    assert_eq!(
        p,
        [
            ("primary".to_string(), StepOutcome::Transient),
            ("secondary".to_string(), StepOutcome::Ok)
        ]
    );
}

#[tokio::test]
async fn a_permanent_error_does_not_fall_back() {
    let primary = FakeOpenAi::start(Mode::ContextTooLong).await;
    let secondary = FakeOpenAi::start(Mode::Ok("never".into())).await;
    let routes = format!(
        "{}{}",
        openai_backend("chat", "primary", &primary.base_url, ""),
        openai_backend("chat", "secondary", &secondary.base_url, "")
    );
    let mut env = TestEnv::with_options("routes-permanent", with_routes(&routes)).await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    let id = flotilla_tests::submit_id(&client, &chat("a very long text")).await;
    let done = client.wait(&id, WAIT).await.expect("job ends");
    assert_eq!(done.status, JobStatus::Failed);
    let err = done.error.clone().expect("error");
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(
        err.message.contains("context_length_exceeded"),
        "{}",
        err.message
    );
    assert_eq!(done.attempts, 1, "not retried");
    assert_eq!(done.served_by, None);
    assert_eq!(
        path(&done),
        [("primary".to_string(), StepOutcome::Permanent)]
    );
    assert_eq!(secondary.calls(), 0);
}

#[tokio::test]
async fn a_route_can_end_in_a_builtin_model() {
    let primary = FakeOpenAi::start(Mode::Status(500)).await;
    let routes = format!(
        "{}[[routes.chat.backends]]\nname = \"degraded\"\ntype = \"builtin\"\nmodel = \"sentiment\"\n",
        openai_backend("chat", "primary", &primary.base_url, "")
    );
    let mut env = TestEnv::with_options("routes-builtin", with_routes(&routes)).await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    let id = flotilla_tests::submit_id(&client, &chat("I love this phone, it is great")).await;
    let done = client.wait(&id, WAIT).await.expect("job ends");
    assert_eq!(done.status, JobStatus::Succeeded, "{}", env.logs());
    assert_eq!(done.output.expect("output")["label"], "positive");
    assert_eq!(done.served_by.as_deref(), Some("degraded"));
}

#[tokio::test]
async fn a_rate_limited_only_backend_retries_after_its_retry_after() {
    let only = FakeOpenAi::start(Mode::RateLimited(2)).await;
    let routes = openai_backend("chat", "only", &only.base_url, "");
    let mut env = TestEnv::with_options("routes-429", with_routes(&routes)).await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    let id = flotilla_tests::submit_id(&client, &chat("hi")).await;
    assert!(
        flotilla_tests::eventually(WAIT, || async { only.calls() >= 1 }).await,
        "first call"
    );
    only.set_mode(Mode::Ok("after the wait".into()));
    let done = client.wait(&id, WAIT).await.expect("job ends");
    assert_eq!(done.status, JobStatus::Succeeded, "{}", env.logs());
    assert_eq!(done.attempts, 2, "one retry through a delay tier");
    let (first, second) = (done.started_at, done.completed_at);
    let waited = second.zip(first).map(|(b, a)| (b - a).num_milliseconds());
    assert!(
        waited.unwrap_or(0) >= 2000,
        "Retry-After honoured: {waited:?}"
    );
}

#[tokio::test]
async fn identical_deterministic_jobs_call_the_backend_once() {
    let fake = FakeOpenAi::start(Mode::Slow(Duration::from_millis(300), "cached".into())).await;
    let routes = openai_backend("chat", "vllm", &fake.base_url, "");
    let mut env = TestEnv::with_options("routes-cache", with_routes(&routes)).await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    env.start_worker(&[]).await;
    let deterministic = JobRequest {
        params: Some(json!({"temperature": 0, "max_tokens": 8})),
        ..chat("What is 2 + 2?")
    };

    // 100 identical jobs at once, over two workers: one backend call.
    let ids = futures_util::future::join_all(
        (0..100).map(|_| flotilla_tests::submit_id(&client, &deterministic)),
    )
    .await;
    let jobs = futures_util::future::join_all(ids.iter().map(|id| client.wait(id, WAIT))).await;
    let mut hits = 0;
    for done in jobs {
        let done = done.expect("job ends");
        assert_eq!(done.status, JobStatus::Succeeded, "{}", env.logs());
        assert_eq!(done.output.as_ref().expect("output")["content"], "cached");
        assert_eq!(done.served_by.as_deref(), Some("vllm"));
        match done.cache_hit {
            Some(true) => {
                hits += 1;
                assert_eq!(done.usage, json!({}), "a hit spends no tokens");
            }
            Some(false) => assert_eq!(done.usage["output_tokens"], 3),
            None => panic!("a deterministic request is cacheable"),
        }
    }
    assert_eq!(hits, 99);
    assert_eq!(fake.calls(), 1);
    let mut counted = 0.0;
    for w in &env.workers {
        counted += flotilla_tests::metric(
            &flotilla_tests::scrape(w.addr).await,
            "flotilla_cache_requests_total",
            &[("model", "chat"), ("result", "hit")],
        );
    }
    assert_eq!(counted, 99.0);

    // A sampled request is not cached.
    let id = flotilla_tests::submit_id(&client, &chat("What is 2 + 2?")).await;
    let done = client.wait(&id, WAIT).await.expect("job ends");
    assert_eq!(done.cache_hit, None);
    assert_eq!(fake.calls(), 2);
}

#[tokio::test]
async fn over_its_rate_limit_a_job_waits_instead_of_failing() {
    let only = FakeOpenAi::start(Mode::Ok("paced".into())).await;
    // 60 requests per minute, no burst: calls at least 1 s apart, fleet-wide.
    let routes = openai_backend("chat", "only", &only.base_url, "rpm = 60");
    let mut env = TestEnv::with_options("routes-rpm", with_routes(&routes)).await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    env.start_worker(&[]).await;
    let req = chat("hi");
    let ids =
        futures_util::future::join_all((0..4).map(|_| flotilla_tests::submit_id(&client, &req)))
            .await;
    for id in &ids {
        let done = client.wait(id, WAIT).await.expect("job ends");
        assert_eq!(done.status, JobStatus::Succeeded, "{}", env.logs());
        assert_eq!(done.served_by.as_deref(), Some("only"));
        assert_eq!(done.attempts, 1, "waiting for the limit spends no attempt");
    }
    let times = only.call_times();
    assert_eq!(times.len(), 4);
    let mut sorted = times.clone();
    sorted.sort();
    for pair in sorted.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(950), "calls {gap:?} apart");
    }
    let mut retried = 0.0;
    for w in &env.workers {
        retried += flotilla_tests::metric(
            &flotilla_tests::scrape(w.addr).await,
            "flotilla_jobs_retried_total",
            &[("model", "chat")],
        );
    }
    assert!(
        retried >= 3.0,
        "held-back jobs went to a delay tier: {retried}"
    );
}

#[tokio::test]
async fn a_missing_api_key_variable_stops_the_worker_with_a_clear_message() {
    let routes = openai_backend(
        "chat",
        "keyed",
        "http://127.0.0.1:9/v1",
        "api_key_env = \"FLOTILLA_TEST_KEY_THAT_IS_NOT_SET\"",
    );
    let mut env = TestEnv::with_options("routes-nokey", with_routes(&routes)).await;
    let idx = env.spawn_worker(&[]);
    let code = env.workers[idx].wait_exit(WAIT).await;
    assert_eq!(code, Some(2), "{}", env.logs());
    let log = env.workers[idx].log_text();
    assert!(
        log.contains("env var FLOTILLA_TEST_KEY_THAT_IS_NOT_SET (api_key_env) is not set"),
        "{log}"
    );
    assert!(log.contains("routes.chat.backends[0] (keyed)"), "{log}");
}
