//! Model routes: `[routes.<name>]` maps a model name to an ordered chain of backends (the
//! fallback chain of `DESIGN.md` "Models"), and the input/params shapes a route accepts.
//!
//! ```toml
//! [routes.chat]
//! [[routes.chat.backends]]
//! name = "vllm"
//! type = "openai"
//! base_url = "http://vllm:8000/v1"
//! model = "meta-llama/Llama-3.1-8B-Instruct"
//! [[routes.chat.backends]]
//! name = "openai"
//! type = "openai"
//! base_url = "https://api.openai.com/v1"
//! api_key_env = "OPENAI_API_KEY"
//! model = "gpt-4o-mini"
//! ```
//!
//! A route's input follows its first `openai` backend's endpoint: chat routes take
//! `{"messages": [{"role", "content"}, ...]}`, embeddings routes `{"input": "..." | [...]}`
//! (the OpenAI request shapes). A route of only built-in backends takes that model's input.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_json::Value;

use crate::{
    catalog::{self, ModelName},
    config::ConfigError,
};

/// Longest route or backend name.
pub const MAX_NAME_LEN: usize = 64;

/// `[routes.<name>]`: one model name served by an ordered chain of backends.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Backends in order of preference; the next one serves a job when one is unavailable.
    pub backends: Vec<BackendConfig>,
}

/// Kind of backend.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendType {
    /// A built-in model (`model` names it: `sentiment`, `langid`, `tokens`).
    Builtin,
    /// Any OpenAI-compatible HTTP server (vLLM, Ollama, llama.cpp, TGI, OpenAI).
    Openai,
    /// The simulated backend (`[models.sim]` defaults).
    Sim,
}

impl BackendType {
    /// Config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Builtin => "builtin",
            Self::Openai => "openai",
            Self::Sim => "sim",
        }
    }
}

/// OpenAI API an `openai` backend calls.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST {base_url}/chat/completions`.
    #[default]
    Chat,
    /// `POST {base_url}/embeddings`.
    Embeddings,
}

/// `[[routes.<name>.backends]]`: one backend of a route.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Name in `served_by`, logs and metrics (`a-z0-9-_.`); default `<route>.<position>`
    /// counted from 1. Backends of the same name in several routes share one circuit breaker.
    #[serde(default)]
    pub name: Option<String>,
    /// `builtin`, `openai` or `sim`.
    #[serde(rename = "type")]
    pub kind: BackendType,
    /// Base URL of an `openai` backend including the version prefix, e.g.
    /// `http://127.0.0.1:11434/v1`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of the env var holding the API key (sent as `Authorization: Bearer`); the key
    /// itself never appears in config, logs or errors.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Upstream model id (`openai`), or the built-in model's name (`builtin`).
    #[serde(default)]
    pub model: Option<String>,
    /// Limit on one call to this backend, seconds (default 60); past it the next backend
    /// serves the job.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Calls in flight to this backend from one worker (default 16); further jobs wait.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// API of an `openai` backend (default `chat`).
    #[serde(default)]
    pub endpoint: Endpoint,
    /// Requests per minute for the whole fleet; over it the backend is skipped, and a job no
    /// backend can serve waits in a delay tier.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens (input + output, from `usage`) per minute for the whole fleet.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Calls allowed back to back under `rpm` (default 1: evenly spaced).
    #[serde(default = "default_burst")]
    pub burst: u64,
}

fn default_burst() -> u64 {
    1
}

fn default_timeout_s() -> u64 {
    60
}

fn default_concurrency() -> usize {
    16
}

impl BackendConfig {
    /// The backend's name in route `route` at `position` (0-based).
    pub fn name_in(&self, route: &str, position: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{route}.{}", position + 1))
    }

    /// Its rate limits, if it has any.
    pub fn limits(&self) -> Option<crate::ratelimit::Limits> {
        (self.rpm.is_some() || self.tpm.is_some()).then_some(crate::ratelimit::Limits {
            rpm: self.rpm,
            tpm: self.tpm,
            burst: self.burst,
        })
    }

    /// The built-in model of a `builtin` backend.
    pub fn builtin(&self) -> Option<ModelName> {
        self.model.as_deref().and_then(ModelName::parse)
    }
}

/// What input a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteShape {
    /// OpenAI chat: `{"messages": [...]}`.
    Chat,
    /// OpenAI embeddings: `{"input": "..." | [...]}`.
    Embeddings,
    /// The input of a built-in model.
    Builtin(ModelName),
    /// Any object (a route of `sim` backends).
    Any,
}

impl RouteShape {
    /// The input shape as `GET /v1/models` shows it.
    pub fn describe(self) -> Value {
        match self {
            Self::Chat => {
                serde_json::json!({"messages": [{"role": "string", "content": "string"}]})
            }
            Self::Embeddings => serde_json::json!({"input": "string | [string]"}),
            Self::Builtin(ModelName::Tokens) => {
                serde_json::json!({"text": "string", "encoding": catalog::ENCODINGS})
            }
            Self::Builtin(ModelName::Sim) | Self::Any => serde_json::json!({}),
            Self::Builtin(_) => serde_json::json!({"text": "string"}),
        }
    }
}

impl RouteConfig {
    /// The input shape: that of the first `openai` backend, else of the first backend.
    pub fn shape(&self) -> RouteShape {
        if let Some(b) = self.backends.iter().find(|b| b.kind == BackendType::Openai) {
            return match b.endpoint {
                Endpoint::Chat => RouteShape::Chat,
                Endpoint::Embeddings => RouteShape::Embeddings,
            };
        }
        match self.backends.first() {
            Some(b) if b.kind == BackendType::Builtin => {
                b.builtin().map_or(RouteShape::Any, RouteShape::Builtin)
            }
            _ => RouteShape::Any,
        }
    }
}

/// Whether `name` may name a route or a backend: 1-64 characters of `A-Za-z0-9-_.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks every route: names, backend fields, shapes that fit together.
///
/// # Errors
/// [`ConfigError`] naming the route and field.
pub fn validate_routes(routes: &HashMap<String, RouteConfig>) -> Result<(), ConfigError> {
    let err = |m: String| Err(ConfigError(m));
    let mut backend_kinds: HashMap<String, (String, BackendType)> = HashMap::new();
    for (route, cfg) in routes {
        if !valid_name(route) {
            return err(format!(
                "routes.{route}: a route name is 1-{MAX_NAME_LEN} characters of A-Z, a-z, 0-9, '-', '_', '.'"
            ));
        }
        if ModelName::parse(route).is_some() {
            return err(format!(
                "routes.{route}: the name of a built-in model; choose another route name"
            ));
        }
        if cfg.backends.is_empty() {
            return err(format!(
                "routes.{route}: at least one [[routes.{route}.backends]]"
            ));
        }
        let shape = cfg.shape();
        let mut names = HashSet::new();
        for (i, b) in cfg.backends.iter().enumerate() {
            let name = b.name_in(route, i);
            let at = format!("routes.{route}.backends[{i}] ({name})");
            if !valid_name(&name) {
                return err(format!(
                    "{at}: name: 1-{MAX_NAME_LEN} characters of A-Z, a-z, 0-9, '-', '_', '.'"
                ));
            }
            if !names.insert(name.clone()) {
                return err(format!("{at}: name appears twice in the route"));
            }
            if let Some((other, kind)) = backend_kinds.get(&name) {
                if *kind != b.kind {
                    return err(format!(
                        "{at}: backend {name:?} is also a {} backend in route {other}",
                        kind.as_str()
                    ));
                }
            }
            backend_kinds.insert(name.clone(), (route.clone(), b.kind));
            if b.timeout_s == 0 || b.max_concurrency == 0 || b.burst == 0 {
                return err(format!(
                    "{at}: timeout_s, max_concurrency and burst: at least 1"
                ));
            }
            if b.rpm == Some(0) || b.tpm == Some(0) {
                return err(format!(
                    "{at}: rpm and tpm: at least 1 (leave out for no limit)"
                ));
            }
            match b.kind {
                BackendType::Openai => {
                    let url = b.base_url.as_deref().unwrap_or_default();
                    match url::Url::parse(url) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
                        _ => {
                            return err(format!(
                                "{at}: base_url: an http(s) URL such as http://127.0.0.1:8000/v1"
                            ))
                        }
                    }
                    if b.model.as_deref().unwrap_or_default().is_empty() {
                        return err(format!("{at}: model: the upstream model id"));
                    }
                    if let Some(var) = &b.api_key_env {
                        if var.is_empty() {
                            return err(format!("{at}: api_key_env: the name of an env var"));
                        }
                    }
                    let own = match b.endpoint {
                        Endpoint::Chat => RouteShape::Chat,
                        Endpoint::Embeddings => RouteShape::Embeddings,
                    };
                    if own != shape {
                        return err(format!(
                            "{at}: endpoint: every openai backend of a route uses the same endpoint"
                        ));
                    }
                }
                BackendType::Builtin => {
                    let Some(m) = b.builtin().filter(|m| *m != ModelName::Sim) else {
                        return err(format!(
                            "{at}: model: a built-in model (sentiment, langid, tokens)"
                        ));
                    };
                    if let RouteShape::Builtin(first) = shape {
                        if first != m && !(is_text(first) && is_text(m)) {
                            return err(format!(
                                "{at}: model: takes another input than {}",
                                first.as_str()
                            ));
                        }
                    }
                    if shape == RouteShape::Embeddings {
                        return err(format!(
                            "{at}: a built-in backend cannot stand in for an embeddings route"
                        ));
                    }
                    no_http_fields(b, &at)?;
                }
                BackendType::Sim => no_http_fields(b, &at)?,
            }
        }
    }
    Ok(())
}

fn is_text(m: ModelName) -> bool {
    matches!(
        m,
        ModelName::Sentiment | ModelName::Langid | ModelName::Tokens
    )
}

fn no_http_fields(b: &BackendConfig, at: &str) -> Result<(), ConfigError> {
    if b.base_url.is_some() || b.api_key_env.is_some() {
        return Err(ConfigError(format!(
            "{at}: base_url and api_key_env belong to openai backends"
        )));
    }
    Ok(())
}

/// Chat parameters passed through to the backend (OpenAI names).
pub const CHAT_PARAMS: [&str; 9] = [
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "cache",
];

/// Embeddings parameters passed through (OpenAI names).
pub const EMBEDDINGS_PARAMS: [&str; 3] = ["dimensions", "encoding_format", "cache"];

/// Largest route input, bytes of JSON.
pub const MAX_INPUT_BYTES: usize = 512 * 1024;

/// Checks a job's `input` and `params` against a route's shape.
///
/// # Errors
/// A message naming the offending field, e.g. `input.messages[0].role: expected a string`.
pub fn validate(route: &RouteConfig, input: &Value, params: &Value) -> Result<(), String> {
    let shape = route.shape();
    match shape {
        RouteShape::Builtin(m) => return catalog::validate(m, input, params),
        // A route of `sim` backends takes what `sim` takes, within the same bounds.
        RouteShape::Any => return catalog::validate(ModelName::Sim, input, params),
        RouteShape::Chat | RouteShape::Embeddings => {}
    }
    let obj = input
        .as_object()
        .ok_or_else(|| "input: expected an object".to_string())?;
    if input.to_string().len() > MAX_INPUT_BYTES {
        return Err(format!("input: more than {MAX_INPUT_BYTES} bytes"));
    }
    let (field, allowed): (&str, &[&str]) = if shape == RouteShape::Chat {
        ("messages", &CHAT_PARAMS)
    } else {
        ("input", &EMBEDDINGS_PARAMS)
    };
    if let Some(extra) = obj.keys().find(|k| k.as_str() != field) {
        return Err(format!(
            "input.{extra}: unknown field for a {} route",
            if shape == RouteShape::Chat {
                "chat"
            } else {
                "embeddings"
            }
        ));
    }
    let value = obj
        .get(field)
        .ok_or_else(|| format!("input.{field}: missing"))?;
    if shape == RouteShape::Chat {
        let msgs = value
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| "input.messages: expected a non-empty array".to_string())?;
        for (i, m) in msgs.iter().enumerate() {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("input.messages[{i}].role: expected a string"))?;
            if role.is_empty() {
                return Err(format!("input.messages[{i}].role: empty"));
            }
            match m.get("content") {
                Some(Value::String(_) | Value::Array(_)) => {}
                _ => {
                    return Err(format!(
                        "input.messages[{i}].content: expected a string or an array of parts"
                    ))
                }
            }
        }
    } else {
        let ok = match value {
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty() && a.iter().all(|v| v.is_string()),
            _ => false,
        };
        if !ok {
            return Err(
                "input.input: expected a non-empty string or a non-empty array of strings".into(),
            );
        }
    }
    match params {
        Value::Null => Ok(()),
        Value::Object(p) => {
            for (k, v) in p {
                if !allowed.contains(&k.as_str()) {
                    return Err(format!(
                        "params.{k}: unknown parameter; expected one of {allowed:?}"
                    ));
                }
                let fits = match k.as_str() {
                    "temperature" | "top_p" | "presence_penalty" | "frequency_penalty" => {
                        v.as_f64().is_some()
                    }
                    "max_tokens" | "dimensions" => v.as_u64().is_some_and(|n| n > 0),
                    "seed" => v.as_i64().is_some(),
                    "stop" => {
                        v.is_string()
                            || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
                    }
                    "response_format" => v.is_object(),
                    "encoding_format" => v.as_str() == Some("float"),
                    "cache" => v.is_boolean(),
                    _ => true,
                };
                if !fits {
                    return Err(format!("params.{k}: value of the wrong type or range"));
                }
            }
            Ok(())
        }
        _ => Err("params: expected an object".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn routes(toml_text: &str) -> HashMap<String, RouteConfig> {
        #[derive(Deserialize)]
        struct F {
            routes: HashMap<String, RouteConfig>,
        }
        toml::from_str::<F>(toml_text).expect("toml").routes
    }

    const CHAT: &str = r#"
        [routes.chat]
        [[routes.chat.backends]]
        name = "primary"
        type = "openai"
        base_url = "http://127.0.0.1:8000/v1"
        model = "llama"
        [[routes.chat.backends]]
        type = "builtin"
        model = "sentiment"
    "#;

    #[test]
    fn a_chat_route_validates_messages_and_params() {
        let r = routes(CHAT);
        validate_routes(&r).unwrap();
        let chat = &r["chat"];
        assert_eq!(chat.shape(), RouteShape::Chat);
        assert_eq!(chat.backends[1].name_in("chat", 1), "chat.2");
        let msgs = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert!(validate(chat, &msgs, &json!({"temperature": 0, "seed": 7})).is_ok());
        assert_eq!(
            validate(chat, &json!({"messages": []}), &Value::Null).unwrap_err(),
            "input.messages: expected a non-empty array"
        );
        assert_eq!(
            validate(chat, &json!({"messages": [{"content": "x"}]}), &Value::Null).unwrap_err(),
            "input.messages[0].role: expected a string"
        );
        assert!(validate(chat, &msgs, &json!({"temprature": 0}))
            .unwrap_err()
            .starts_with("params.temprature: unknown parameter"));
        assert!(validate(chat, &msgs, &json!({"max_tokens": "9"})).is_err());
    }

    #[test]
    fn embeddings_take_a_string_or_strings() {
        let r = routes(
            r#"
            [routes.embed]
            [[routes.embed.backends]]
            type = "openai"
            base_url = "http://127.0.0.1:11434/v1"
            model = "nomic-embed-text"
            endpoint = "embeddings"
            "#,
        );
        validate_routes(&r).unwrap();
        let e = &r["embed"];
        assert!(validate(e, &json!({"input": "a"}), &Value::Null).is_ok());
        assert!(validate(e, &json!({"input": ["a", "b"]}), &Value::Null).is_ok());
        assert!(validate(e, &json!({"input": [1]}), &Value::Null).is_err());
        assert!(validate(e, &json!({"text": "a"}), &Value::Null).is_err());
    }

    #[test]
    fn a_sim_route_takes_what_sim_takes() {
        let r = routes("[routes.fake]\n[[routes.fake.backends]]\ntype = \"sim\"\n");
        validate_routes(&r).unwrap();
        let fake = &r["fake"];
        assert!(validate(fake, &json!({"n": 1}), &json!({"latency_ms": 5})).is_ok());
        assert!(validate(fake, &json!({}), &json!({"latency_ms": 999_999_999})).is_err());
        assert!(validate(fake, &json!("x"), &Value::Null).is_err());
    }

    #[test]
    fn config_mistakes_are_named() {
        let bad = |t: &str| validate_routes(&routes(t)).unwrap_err().0;
        assert!(
            bad("[routes.sentiment]\n[[routes.sentiment.backends]]\ntype = \"sim\"")
                .contains("built-in model")
        );
        assert!(bad("[routes.x]\nbackends = []").contains("at least one"));
        assert!(
            bad("[routes.x]\n[[routes.x.backends]]\ntype = \"openai\"\nmodel = \"m\"")
                .contains("base_url")
        );
        assert!(
            bad("[routes.x]\n[[routes.x.backends]]\ntype = \"builtin\"\nmodel = \"gpt\"")
                .contains("built-in model")
        );
        assert!(bad(
            "[routes.x]\n[[routes.x.backends]]\ntype = \"openai\"\nbase_url = \"http://h/v1\"\nmodel = \"m\"\nrpm = 0"
        )
        .contains("rpm and tpm"));
        assert!(
            toml::from_str::<HashMap<String, HashMap<String, RouteConfig>>>(
                "[routes.x]\n[[routes.x.backends]]\ntype = \"openai\"\nurl = \"x\""
            )
            .is_err()
        );
    }
}
