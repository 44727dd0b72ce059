//! Fleet-wide circuit breakers: a failing primary opens its breaker in every worker, jobs
//! keep succeeding through the fallback, and the primary is probed and used again once it
//! recovers.

use std::time::Duration;

use flotilla_shared::job::{Job, JobRequest, JobStatus, StepOutcome};
use flotilla_tests::{
    eventually,
    fake_openai::{FakeOpenAi, Mode},
    job, listed_model, metric, scrape, submit_id, EnvOptions, TestEnv,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn chat() -> JobRequest {
    job(
        "chat",
        json!({"messages": [{"role": "user", "content": "hi"}]}),
        None,
    )
}

async fn run(env: &TestEnv, client: &flotilla_producer::Client) -> Job {
    let id = submit_id(client, &chat()).await;
    let done = client.wait(&id, WAIT).await.expect("job ends");
    assert_eq!(done.status, JobStatus::Succeeded, "{}", env.logs());
    done
}

async fn states(env: &TestEnv) -> Vec<f64> {
    let mut out = Vec::new();
    for w in &env.workers {
        let text = scrape(w.addr).await;
        out.push(metric(
            &text,
            "flotilla_breaker_state",
            &[("backend", "primary")],
        ));
    }
    out
}

#[tokio::test]
async fn a_failing_primary_opens_its_breaker_in_every_worker_and_is_used_again_after_recovery() {
    let primary = FakeOpenAi::start(Mode::Status(503)).await;
    let secondary = FakeOpenAi::start(Mode::Ok("from secondary".into())).await;
    let mut opts = EnvOptions::default();
    opts.jobs_toml = format!(
        "{}\n[breaker]\nwindow_s = 60\nmin_requests = 3\nfailure_rate = 0.5\ncooldown_s = 8\n\
         [[routes.chat.backends]]\nname = \"primary\"\ntype = \"openai\"\nbase_url = \"{}\"\nmodel = \"p\"\ntimeout_s = 2\n\
         [[routes.chat.backends]]\nname = \"secondary\"\ntype = \"openai\"\nbase_url = \"{}\"\nmodel = \"s\"\ntimeout_s = 2\n",
        opts.jobs_toml, primary.base_url, secondary.base_url
    );
    let mut env = TestEnv::with_options("breakers", opts).await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    env.start_worker(&[]).await;

    // Three failures in the window open the breaker; every job still succeeds.
    for _ in 0..3 {
        let done = run(&env, &client).await;
        assert_eq!(done.served_by.as_deref(), Some("secondary"));
    }
    assert_eq!(primary.calls(), 3);
    // Both workers see it open, including one that may have sent no traffic.
    assert!(
        eventually(WAIT, || async { states(&env).await == [2.0, 2.0] }).await,
        "breaker states {:?}",
        states(&env).await
    );
    let chat_route = listed_model(&client, "chat").await;
    assert_eq!(chat_route["backends"][0]["breaker"], "open", "{chat_route}");
    assert_eq!(chat_route["backends"][1]["breaker"], "closed");

    // While open, the primary is skipped without a call.
    let done = run(&env, &client).await;
    assert_eq!(done.served_by.as_deref(), Some("secondary"));
    let path: Vec<_> = done
        .route_path
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.backend, s.outcome))
        .collect();
    assert_eq!(
        path,
        [
            ("primary".to_string(), StepOutcome::BreakerOpen),
            ("secondary".to_string(), StepOutcome::Ok)
        ]
    );
    assert_eq!(primary.calls(), 3, "no call while open");

    // The primary recovers: after the cool-down one probe closes the breaker fleet-wide.
    primary.set_mode(Mode::Ok("from primary".into()));
    let recovered = eventually(WAIT, || async {
        run(&env, &client).await.served_by.as_deref() == Some("primary")
    })
    .await;
    assert!(recovered, "{}", env.logs());
    assert!(
        eventually(WAIT, || async { states(&env).await == [0.0, 0.0] }).await,
        "breaker states {:?}",
        states(&env).await
    );
    let done = run(&env, &client).await;
    assert_eq!(done.served_by.as_deref(), Some("primary"));
    assert_eq!(done.output.expect("output")["content"], "from primary");
    let mut handed = 0.0;
    for w in &env.workers {
        handed += metric(
            &scrape(w.addr).await,
            "flotilla_fallbacks_total",
            &[("route", "chat"), ("from", "primary"), ("to", "secondary")],
        );
    }
    assert!(handed >= 4.0, "fallbacks counted: {handed}");
}
