//! A simulated backend for tests and benchmarks: latency and failures from config, overridden
//! per job by `params` (`latency_ms`, `jitter_ms`, `fail_rate`, `fail`, `crash`).

use std::time::Duration;

use flotilla_shared::{config::SimConfig, job::ErrorKind};
use serde_json::{json, Value};

use super::ModelError;

/// What one simulated call will do, decided before it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SimPlan {
    /// How long to take.
    pub latency: Duration,
    /// Fail at the end, with this error.
    pub failure: Option<ModelError>,
    /// Abort the process (only when config allows it).
    pub crash: bool,
}

/// The simulated backend.
pub struct Sim {
    cfg: SimConfig,
}

impl Sim {
    /// A backend with `cfg`'s defaults.
    pub fn new(cfg: SimConfig) -> Self {
        Self { cfg }
    }

    /// Whether jobs may use it.
    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// Decides latency and outcome from `params` and the defaults.
    pub fn plan(&self, params: &Value) -> SimPlan {
        let u64_param = |k: &str| params.get(k).and_then(Value::as_u64);
        let base = u64_param("latency_ms").unwrap_or(self.cfg.latency_ms);
        let jitter = u64_param("jitter_ms").unwrap_or(0);
        let extra = if jitter > 0 {
            rand::random_range(0..=jitter)
        } else {
            0
        };
        let rate = params
            .get("fail_rate")
            .and_then(Value::as_f64)
            .unwrap_or(self.cfg.fail_rate);
        let failure = (rate > 0.0 && rand::random::<f64>() < rate).then(|| {
            match params.get("fail").and_then(Value::as_str) {
                Some("permanent") => {
                    ModelError::permanent(ErrorKind::ModelError, "simulated permanent failure")
                }
                _ => ModelError::transient(
                    ErrorKind::UpstreamUnavailable,
                    "simulated transient failure",
                ),
            }
        });
        let crash =
            self.cfg.allow_crash && params.get("crash").and_then(Value::as_bool) == Some(true);
        SimPlan {
            latency: Duration::from_millis(base + extra),
            failure,
            crash,
        }
    }

    /// Carries out `plan`: sleeps (async, not blocking a thread), then answers or fails.
    ///
    /// # Errors
    /// The planned failure.
    pub async fn run(&self, plan: SimPlan, input: &Value) -> Result<Value, ModelError> {
        if plan.crash {
            tracing::error!("sim: params.crash set and allowed; aborting the process");
            std::process::abort();
        }
        tokio::time::sleep(plan.latency).await;
        match plan.failure {
            Some(err) => Err(err),
            None => Ok(json!({"echo": input, "latency_ms": plan.latency.as_millis() as u64})),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn latency_and_failures_follow_params() {
        let sim = Sim::new(SimConfig::default());
        let plan = sim.plan(&json!({"latency_ms": 1500}));
        assert_eq!(plan.latency, Duration::from_millis(1500));
        let start = tokio::time::Instant::now();
        let out = sim.run(plan, &json!({"x": 1})).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        assert_eq!(out["echo"]["x"], 1);

        let failing = sim.plan(&json!({"fail_rate": 1.0, "fail": "permanent"}));
        let err = sim.run(failing, &json!({})).await.unwrap_err();
        assert!(!err.transient);
        let transient = sim.plan(&json!({"fail_rate": 1.0}));
        assert!(sim.run(transient, &json!({})).await.unwrap_err().transient);
        // crash is ignored unless config allows it
        assert!(!sim.plan(&json!({"crash": true})).crash);
    }
}
