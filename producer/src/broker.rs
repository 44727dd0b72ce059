//! A publisher-confirm link to RabbitMQ that reconnects on demand.
//!
//! The API answers `503` while the broker is away and recovers by itself: every publish asks
//! [`BrokerLink::publisher`], which reuses the open channel or opens a new connection (one at a
//! time), declaring the topology again.

use std::time::Duration;

use flotilla_shared::{
    amqp::{connect, PublishError, Publisher},
    topology::Topology,
};
use lapin::Connection;
use tokio::sync::Mutex;

/// The producer's broker connection.
pub struct BrokerLink {
    url: String,
    name: String,
    confirm_timeout: Duration,
    topology: Topology,
    state: Mutex<Option<(Connection, Publisher)>>,
}

impl BrokerLink {
    /// A link that connects on first use.
    pub fn new(url: String, name: String, confirm_timeout: Duration, topology: Topology) -> Self {
        Self {
            url,
            name,
            confirm_timeout,
            topology,
            state: Mutex::new(None),
        }
    }

    /// An open publisher, connecting (and declaring the topology) if needed.
    ///
    /// # Errors
    /// [`PublishError::Amqp`] when the broker cannot be reached.
    pub async fn publisher(&self) -> Result<Publisher, PublishError> {
        let mut state = self.state.lock().await;
        if let Some((conn, publisher)) = state.as_ref() {
            if conn.status().connected() && publisher.is_connected() {
                return Ok(publisher.clone());
            }
            tracing::warn!("broker connection lost; reconnecting");
        }
        *state = None;
        let conn = connect(&self.url, &self.name).await?;
        let publisher = Publisher::open(&conn, self.confirm_timeout).await?;
        self.topology.declare(publisher.channel()).await?;
        tracing::info!("connected to the broker");
        *state = Some((conn, publisher.clone()));
        Ok(publisher)
    }

    /// Whether the link is up right now (does not connect).
    pub async fn is_connected(&self) -> bool {
        match self.state.lock().await.as_ref() {
            Some((conn, p)) => conn.status().connected() && p.is_connected(),
            None => false,
        }
    }

    /// Keeps the link up in the background: checks every `every`, reconnecting when needed.
    pub async fn keep_alive(&self, every: Duration) {
        loop {
            if let Err(err) = self.publisher().await {
                tracing::warn!(%err, "broker unavailable");
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Closes the connection (shutdown).
    pub async fn close(&self) {
        if let Some((conn, _)) = self.state.lock().await.take() {
            let _ = conn.close(200, "shutdown".into()).await;
        }
    }
}
