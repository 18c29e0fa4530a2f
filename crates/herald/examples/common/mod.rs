//! What the multi-node examples share: where their nodes connect.

use herald::{EmbeddedBroker, Herald};

/// The place every node of an example connects to: the Redis URL given as the first
/// command-line argument, or else one embedded broker shared by all nodes of this process.
pub(crate) struct Nodes {
    url: Option<String>,
    broker: EmbeddedBroker,
}

impl Nodes {
    /// From the command line: `cargo run --example NAME [redis://127.0.0.1:6379]`.
    pub(crate) fn from_args() -> Self {
        Nodes {
            url: std::env::args().nth(1),
            broker: EmbeddedBroker::new(),
        }
    }

    /// Connects one node, named `id`.
    pub(crate) async fn node(&self, id: &str) -> herald::Result<Herald> {
        let builder = Herald::builder().node_id(id);
        match &self.url {
            Some(url) => builder.redis(url),
            None => builder.embedded(self.broker.clone()),
        }
        .connect()
        .await
    }
}
