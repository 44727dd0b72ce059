//! The RabbitMQ topology as data, declared idempotently by every binary at start.
//!
//! | name | kind | notes |
//! |---|---|---|
//! | `<ns>.jobs` | direct exchange | routing key = pool |
//! | `<ns>.jobs.<pool>` | quorum queue | `x-delivery-limit`, DLX `<ns>.dlx`, at-least-once dead-lettering |
//! | `<ns>.retry.<N>s` | fanout exchange + quorum queue | `x-message-ttl`, dead-letters back to `<ns>.jobs` (at-least-once) keeping the pool routing key |
//! | `<ns>.dlx` / `<ns>.dlq` | fanout exchange / quorum queue | dead letters, kept for inspection and replay |
//! | `<ns>.events` | fanout exchange + quorum queue | completion events for the webhook dispatcher |
//! | `<ns>.events.retry.<N>s` | fanout exchange + quorum queue | `x-message-ttl`, dead-letters back to `<ns>.events`: an event waiting for its next attempt |
//!
//! Retry tiers are quorum queues with at-least-once dead-lettering (RabbitMQ ≥ 3.10, which
//! needs `x-overflow: reject-publish`). Classic queues dead-letter at-most-once: messages whose
//! TTL ran out while the broker restarted were dropped because the jobs queue was not back yet —
//! the chaos suite lost 8 of 2000 jobs that way before this change.

use lapin::{
    options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
    Channel, ExchangeKind,
};

use crate::names::Names;

/// One exchange to declare.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeSpec {
    /// Exchange name.
    pub name: String,
    /// Exchange type.
    pub kind: ExchangeKind,
}

/// One queue to declare (always durable).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// `x-*` arguments.
    pub args: Vec<(&'static str, QueueArg)>,
}

/// A queue argument value.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueArg {
    /// A string argument.
    Str(String),
    /// An integer argument.
    Int(i64),
}

/// One binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingSpec {
    /// Queue name.
    pub queue: String,
    /// Exchange name.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
}

/// Exchanges, queues and bindings of one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Exchanges, declared first.
    pub exchanges: Vec<ExchangeSpec>,
    /// Queues, declared second.
    pub queues: Vec<QueueSpec>,
    /// Bindings, declared last.
    pub bindings: Vec<BindingSpec>,
}

impl Topology {
    /// The topology a config file describes: its pools, job and event delay tiers and
    /// delivery limit.
    pub fn of(names: &Names, cfg: &crate::config::FileConfig) -> Self {
        let j = &cfg.jobs;
        Self::new(
            names,
            &j.pools,
            &j.retry_tiers_s,
            &cfg.webhooks.tiers_s,
            j.delivery_limit,
        )
    }

    /// The topology of `names` for `pools`, with job retry tiers of `tiers_s` seconds, event
    /// delay tiers of `event_tiers_s` seconds and a quorum-queue `x-delivery-limit` of
    /// `delivery_limit`.
    pub fn new(
        names: &Names,
        pools: &[String],
        tiers_s: &[u64],
        event_tiers_s: &[u64],
        delivery_limit: u32,
    ) -> Self {
        let mut exchanges = vec![
            ExchangeSpec {
                name: names.jobs_exchange(),
                kind: ExchangeKind::Direct,
            },
            ExchangeSpec {
                name: names.dlx(),
                kind: ExchangeKind::Fanout,
            },
        ];
        let quorum = || ("x-queue-type", QueueArg::Str("quorum".into()));
        let mut queues = vec![
            QueueSpec {
                name: names.dlq(),
                args: vec![quorum()],
            },
            QueueSpec {
                name: names.events_queue(),
                args: vec![
                    quorum(),
                    ("x-delivery-limit", QueueArg::Int(i64::from(delivery_limit))),
                    ("x-dead-letter-exchange", QueueArg::Str(names.dlx())),
                    (
                        "x-dead-letter-strategy",
                        QueueArg::Str("at-least-once".into()),
                    ),
                    ("x-overflow", QueueArg::Str("reject-publish".into())),
                ],
            },
        ];
        let mut bindings = vec![
            BindingSpec {
                queue: names.dlq(),
                exchange: names.dlx(),
                routing_key: String::new(),
            },
            BindingSpec {
                queue: names.events_queue(),
                exchange: names.events_exchange(),
                routing_key: String::new(),
            },
        ];
        exchanges.push(ExchangeSpec {
            name: names.events_exchange(),
            kind: ExchangeKind::Fanout,
        });
        for pool in pools {
            queues.push(QueueSpec {
                name: names.jobs_queue(pool),
                args: vec![
                    quorum(),
                    ("x-delivery-limit", QueueArg::Int(i64::from(delivery_limit))),
                    ("x-dead-letter-exchange", QueueArg::Str(names.dlx())),
                    (
                        "x-dead-letter-strategy",
                        QueueArg::Str("at-least-once".into()),
                    ),
                    ("x-overflow", QueueArg::Str("reject-publish".into())),
                ],
            });
            bindings.push(BindingSpec {
                queue: names.jobs_queue(pool),
                exchange: names.jobs_exchange(),
                routing_key: pool.clone(),
            });
        }
        let tiers = tiers_s
            .iter()
            .map(|&d| (names.retry_tier(d), d, names.jobs_exchange()))
            .chain(
                event_tiers_s
                    .iter()
                    .map(|&d| (names.events_tier(d), d, names.events_exchange())),
            );
        for (name, delay, back_to) in tiers {
            exchanges.push(ExchangeSpec {
                name: name.clone(),
                kind: ExchangeKind::Fanout,
            });
            queues.push(QueueSpec {
                name: name.clone(),
                args: vec![
                    quorum(),
                    (
                        "x-message-ttl",
                        QueueArg::Int(delay.saturating_mul(1000) as i64),
                    ),
                    ("x-dead-letter-exchange", QueueArg::Str(back_to)),
                    (
                        "x-dead-letter-strategy",
                        QueueArg::Str("at-least-once".into()),
                    ),
                    ("x-overflow", QueueArg::Str("reject-publish".into())),
                ],
            });
            bindings.push(BindingSpec {
                queue: name.clone(),
                exchange: name,
                routing_key: String::new(),
            });
        }
        Self {
            exchanges,
            queues,
            bindings,
        }
    }

    /// Declares everything; declaring an identical topology again is a no-op.
    ///
    /// # Errors
    /// The broker's error, e.g. `PRECONDITION_FAILED` when a queue exists with other arguments.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        for ex in &self.exchanges {
            channel
                .exchange_declare(
                    ShortString::from(ex.name.as_str()),
                    ex.kind.clone(),
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        for q in &self.queues {
            let mut args = FieldTable::default();
            for (k, v) in &q.args {
                let value = match v {
                    QueueArg::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
                    QueueArg::Int(i) => AMQPValue::LongLongInt(*i),
                };
                args.insert(ShortString::from(*k), value);
            }
            channel
                .queue_declare(
                    ShortString::from(q.name.as_str()),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args,
                )
                .await?;
        }
        for b in &self.bindings {
            channel
                .queue_bind(
                    ShortString::from(b.queue.as_str()),
                    ShortString::from(b.exchange.as_str()),
                    ShortString::from(b.routing_key.as_str()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Deletes every queue and exchange of the topology (test namespaces, teardown).
    ///
    /// # Errors
    /// The broker's error.
    pub async fn delete(&self, channel: &Channel) -> Result<(), lapin::Error> {
        for q in &self.queues {
            channel
                .queue_delete(
                    ShortString::from(q.name.as_str()),
                    QueueDeleteOptions::default(),
                )
                .await?;
        }
        for ex in &self.exchanges {
            channel
                .exchange_delete(
                    ShortString::from(ex.name.as_str()),
                    ExchangeDeleteOptions::default(),
                )
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_quorum_queue_per_pool_with_a_delivery_limit() {
        let names = Names::new("t").unwrap();
        let topo = Topology::new(
            &names,
            &["default".into(), "gpu".into()],
            &[1, 5],
            &[1, 30],
            20,
        );
        let gpu = topo.queues.iter().find(|q| q.name == "t.jobs.gpu").unwrap();
        assert!(gpu.args.contains(&("x-delivery-limit", QueueArg::Int(20))));
        assert!(gpu
            .args
            .contains(&("x-queue-type", QueueArg::Str("quorum".into()))));
        let tier = topo.queues.iter().find(|q| q.name == "t.retry.5s").unwrap();
        assert!(tier.args.contains(&("x-message-ttl", QueueArg::Int(5000))));
        assert!(tier
            .args
            .contains(&("x-dead-letter-exchange", QueueArg::Str("t.jobs".into()))));
        assert!(topo
            .bindings
            .iter()
            .any(|b| b.queue == "t.jobs.gpu" && b.exchange == "t.jobs" && b.routing_key == "gpu"));
        let event_tier = topo
            .queues
            .iter()
            .find(|q| q.name == "t.events.retry.30s")
            .unwrap();
        assert!(event_tier
            .args
            .contains(&("x-dead-letter-exchange", QueueArg::Str("t.events".into()))));
        assert!(topo
            .bindings
            .iter()
            .any(|b| b.queue == "t.events" && b.exchange == "t.events"));
    }
}
