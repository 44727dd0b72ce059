//! Connecting to RabbitMQ and publishing with publisher confirms.
//!
//! Every publish is persistent (`delivery_mode` 2), `mandatory` (an unroutable message comes
//! back instead of vanishing) and waits for the broker's confirm within a timeout; anything
//! but a clean ack is a [`PublishError`].

use std::time::Duration;

use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
    BasicProperties, Channel, Connection, ConnectionProperties,
};

/// Longest wait for the TCP + AMQP handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection named `name` (shown in the management UI).
///
/// The heartbeat comes from the URL (`?heartbeat=10`; the default URL sets it), so a silently
/// dropped connection is noticed within about two intervals.
///
/// # Errors
/// The broker's or the network's error; a handshake slower than [`CONNECT_TIMEOUT`] is an
/// `io::ErrorKind::TimedOut` error.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "AMQP connection handshake timed out",
        )
        .into()),
    }
}

/// Why a publish did not become durable on the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel or connection failed.
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused the message (`basic.nack`), e.g. a full queue with `reject-publish`.
    #[error("broker nacked the message")]
    Nacked,
    /// No queue was bound for the routing key (`basic.return`).
    #[error("message returned by the broker: {0}")]
    Returned(String),
    /// No confirm arrived in time; the message may or may not be stored.
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
}

impl PublishError {
    /// Whether trying again later may succeed (every case but a routing error).
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Returned(_))
    }
}

/// A publisher-confirm channel. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    confirm_timeout: Duration,
}

impl Publisher {
    /// Opens a channel on `conn` and puts it in confirm mode.
    ///
    /// # Errors
    /// The broker's error.
    pub async fn open(conn: &Connection, confirm_timeout: Duration) -> Result<Self, lapin::Error> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            confirm_timeout,
        })
    }

    /// The underlying channel (for declaring topology).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Whether the channel can still publish.
    pub fn is_connected(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes `body` and waits for the confirm.
    ///
    /// # Errors
    /// [`PublishError`] unless the broker acked it and routed it to at least one queue.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let pending = self
            .channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await?;
        let confirmation = tokio::time::timeout(self.confirm_timeout, pending)
            .await
            .map_err(|_| PublishError::Timeout(self.confirm_timeout))??;
        if confirmation.is_nack() {
            return Err(PublishError::Nacked);
        }
        if let Some(returned) = confirmation.take_message() {
            return Err(PublishError::Returned(format!(
                "{} {}",
                returned.reply_code, returned.reply_text
            )));
        }
        Ok(())
    }
}

/// Properties of a JSON message: `message_id`, `content_type`, `timestamp` (Unix s) and
/// `headers`.
pub fn json_properties(message_id: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(ShortString::from(message_id))
        .with_content_type(ShortString::from("application/json"))
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_headers(headers)
}

/// Builds a header table from string and integer values.
pub fn headers<'a>(
    strings: impl IntoIterator<Item = (&'a str, &'a str)>,
    ints: impl IntoIterator<Item = (&'a str, i64)>,
) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in strings {
        table.insert(
            ShortString::from(k),
            AMQPValue::LongString(LongString::from(v)),
        );
    }
    for (k, v) in ints {
        table.insert(ShortString::from(k), AMQPValue::LongLongInt(v));
    }
    table
}

/// Reads an integer header of any AMQP integer width.
pub fn header_i64(props: &BasicProperties, name: &str) -> Option<i64> {
    let value = props.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}

/// Reads a string header.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let value = props.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
