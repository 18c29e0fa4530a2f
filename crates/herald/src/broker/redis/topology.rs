//! Where Herald's Redis is: one server (`redis://`), a primary found through Redis Sentinel
//! (`redis+sentinel://`), or a Redis Cluster (`redis+cluster://`); the command connection
//! each of them uses; and the URL forms that name them.
//!
//! URL forms (credentials, when given, are those of the Redis data nodes):
//!
//! - `redis+sentinel://[user[:password]@]host1:port1,host2:port2/<primary name>[/<db>]`:
//!   the sentinels (port 26379 by default, contacted without credentials) are asked for the
//!   current primary of the named group; Herald follows it through failovers.
//! - `redis+cluster://[user[:password]@]host1:port1,host2:port2`: seed nodes of a Redis
//!   Cluster (port 6379 by default); the slot map is discovered from them.
//!
//! `rediss+sentinel://` and `rediss+cluster://` are the same over TLS (sentinels and nodes
//! alike), trusting the roots of `tls_ca` (or the system's).
//!
//! Sentinel, Cluster and TLS are the crate features `sentinel`, `cluster` and `tls` (all on
//! by default); a URL that needs a feature left out is refused, naming the feature.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

#[cfg(feature = "sentinel")]
pub(crate) use sentinel::SentinelTarget;

/// Where the data lives.
pub(crate) enum Target {
    /// One server (or a proxy in front of it).
    Single(redis::Client),
    /// A primary found through Sentinel.
    #[cfg(feature = "sentinel")]
    Sentinel(SentinelTarget),
    /// A Redis Cluster.
    #[cfg(feature = "cluster")]
    Cluster(ClusterTarget),
}

/// The URL schemes of one server that the Redis client understands.
const SINGLE_SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis+unix",
    "unix",
    "valkey",
    "valkeys",
    "valkey+unix",
];

/// Masks the password of a URL for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url.to_string(),
    }
}

/// Parses a Herald Redis URL; `tls_ca` is a PEM root certificate to trust for `rediss://`
/// instead of the system's. Errors are reasons for `Error::InvalidUrl`.
#[cfg_attr(
    not(any(feature = "sentinel", feature = "cluster")),
    allow(unused_variables)
)]
pub(crate) fn parse(url: &str, tls_ca: Option<&[u8]>) -> Result<Target, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redis::Client::open(url)
            .map(Target::Single)
            .map_err(|e| e.to_string());
    };
    let tls = scheme.starts_with("rediss") || scheme.starts_with("valkeys");
    if tls && !cfg!(feature = "tls") {
        return Err(needs_feature(scheme, "tls"));
    }
    match scheme {
        "redis+sentinel" | "valkey+sentinel" | "rediss+sentinel" | "valkeys+sentinel" => {
            #[cfg(feature = "sentinel")]
            return SentinelTarget::parse(rest, tls, tls_ca).map(Target::Sentinel);
            #[cfg(not(feature = "sentinel"))]
            return Err(needs_feature(scheme, "sentinel"));
        }
        "redis+cluster" | "valkey+cluster" | "rediss+cluster" | "valkeys+cluster" => {
            #[cfg(feature = "cluster")]
            return ClusterTarget::parse(rest, tls, tls_ca).map(Target::Cluster);
            #[cfg(not(feature = "cluster"))]
            return Err(needs_feature(scheme, "cluster"));
        }
        s if SINGLE_SCHEMES.contains(&s) => client(url, tls_ca)
            .map(Target::Single)
            .map_err(|e| e.to_string()),
        s => Err(format!("unsupported scheme {s:?}")),
    }
}

/// The reason for refusing a URL whose scheme needs a crate feature that was left out.
fn needs_feature(scheme: &str, feature: &str) -> String {
    format!(
        "{scheme}:// needs the herald crate's `{feature}` feature, which this build leaves out; \
         enable it in Cargo.toml (features = [\"{feature}\"])"
    )
}

/// A client for `url`, trusting `tls_ca` (PEM) for `rediss://` when given.
fn client(url: &str, tls_ca: Option<&[u8]>) -> RedisResult<redis::Client> {
    #[cfg(feature = "tls")]
    if url.starts_with("rediss://") || url.starts_with("valkeys://") {
        super::tls::ensure_crypto_provider();
        if let Some(ca) = tls_ca {
            return redis::Client::build_with_tls(url, super::tls::certificates(ca));
        }
    }
    #[cfg(not(feature = "tls"))]
    let _ = tls_ca; // only TLS URLs use it, and they are refused without the feature
    redis::Client::open(url)
}

/// Splits `[userinfo@]hosts[/path]` after the scheme.
#[cfg(any(feature = "sentinel", feature = "cluster"))]
fn split_rest(rest: &str) -> (&str, &str, &str) {
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let (hosts, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash + 1..]),
        None => (rest, ""),
    };
    (userinfo, hosts, path)
}

/// `host[:port]` items of a comma-separated list, with a default port.
#[cfg(any(feature = "sentinel", feature = "cluster"))]
fn host_list(hosts: &str, default_port: u16) -> Result<Vec<(String, u16)>, String> {
    let mut out = Vec::new();
    for item in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let (host, port) = match item.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in {item:?}"))?,
            ),
            None => (item, default_port),
        };
        if host.is_empty() || host.contains(['[', ']', '?', '#']) {
            return Err(format!("bad host {item:?}"));
        }
        out.push((host.to_string(), port));
    }
    if out.is_empty() {
        return Err("no host given".into());
    }
    Ok(out)
}

/// The Cluster form of the URL.
#[cfg(feature = "cluster")]
pub(crate) struct ClusterTarget {
    /// `redis://[userinfo@]host:port` (`rediss://` with TLS) of each seed node.
    pub(crate) nodes: Vec<String>,
    /// With TLS: a PEM root certificate to trust instead of the system's.
    tls_ca: Option<Vec<u8>>,
}

#[cfg(feature = "cluster")]
impl ClusterTarget {
    /// Parses what follows `redis+cluster://`.
    fn parse(rest: &str, tls: bool, tls_ca: Option<&[u8]>) -> Result<Self, String> {
        let (userinfo, hosts, path) = split_rest(rest);
        if !path.is_empty() {
            return Err("a cluster has no database number: remove the path".into());
        }
        let node_scheme = if tls { "rediss" } else { "redis" };
        let nodes = host_list(hosts, 6379)?
            .into_iter()
            .map(|(h, p)| format!("{node_scheme}://{userinfo}{h}:{p}"))
            .collect();
        #[cfg(feature = "tls")]
        if tls {
            super::tls::ensure_crypto_provider();
        }
        Ok(ClusterTarget {
            nodes,
            tls_ca: if tls {
                tls_ca.map(<[u8]>::to_vec)
            } else {
                None
            },
        })
    }

    /// A cluster client builder for the seed nodes, with the TLS roots to trust.
    pub(crate) fn builder(&self) -> redis::cluster::ClusterClientBuilder {
        let builder = redis::cluster::ClusterClientBuilder::new(self.nodes.clone());
        #[cfg(feature = "tls")]
        if let Some(ca) = &self.tls_ca {
            return builder.certs(super::tls::certificates(ca));
        }
        builder
    }

    /// A client for the first seed node.
    pub(crate) fn first_node(&self) -> RedisResult<redis::Client> {
        let url = self.nodes.first().map(String::as_str).unwrap_or_default();
        client(url, self.tls_ca.as_deref())
    }
}

#[cfg(feature = "sentinel")]
mod sentinel {
    //! The Sentinel form of the URL, and asking the sentinels for the primary.

    use std::time::Duration;

    use redis::{ErrorKind as RedisKind, RedisError, RedisResult};

    use super::{client, host_list, split_rest};

    /// The Sentinel form of the URL.
    pub(crate) struct SentinelTarget {
        /// `redis://host:port` of each sentinel.
        pub(crate) sentinels: Vec<String>,
        /// The name of the primary's group, as the sentinels know it.
        pub(crate) master: String,
        /// `user:password@` or "".
        userinfo: String,
        /// `/db` or "".
        db: String,
        /// `rediss+sentinel://`: sentinels and data nodes over TLS, trusting these PEM roots
        /// (the system's when `None`).
        tls: Option<Option<Vec<u8>>>,
    }

    impl SentinelTarget {
        /// Parses what follows `redis+sentinel://`.
        pub(super) fn parse(rest: &str, tls: bool, tls_ca: Option<&[u8]>) -> Result<Self, String> {
            let tls = tls.then(|| tls_ca.map(<[u8]>::to_vec));
            let sentinel_scheme = if tls.is_some() { "rediss" } else { "redis" };
            let (userinfo, hosts, path) = split_rest(rest);
            let sentinels = host_list(hosts, 26379)?
                .into_iter()
                .map(|(h, p)| format!("{sentinel_scheme}://{h}:{p}"))
                .collect();
            let mut parts = path.split('/');
            let master = parts.next().unwrap_or("").to_string();
            if master.is_empty() {
                return Err("the primary's name is missing (…/<name> after the sentinels)".into());
            }
            let db = match parts.next() {
                None | Some("") => String::new(),
                Some(db) => {
                    db.parse::<i64>()
                        .map_err(|_| format!("bad database number {db:?}"))?;
                    format!("/{db}")
                }
            };
            if parts.next().is_some() {
                return Err("unexpected path after /<name>/<db>".into());
            }
            Ok(SentinelTarget {
                sentinels,
                master,
                userinfo: userinfo.to_string(),
                db,
                tls,
            })
        }

        /// The URL of a data node at `host:port`.
        pub(crate) fn data_url(&self, host: &str, port: u16) -> String {
            let scheme = if self.tls.is_some() {
                "rediss"
            } else {
                "redis"
            };
            format!("{scheme}://{}{host}:{port}{}", self.userinfo, self.db)
        }

        /// A client for the data node at `host:port`.
        pub(crate) fn data_client(&self, host: &str, port: u16) -> RedisResult<redis::Client> {
            client(&self.data_url(host, port), self.ca())
        }

        fn ca(&self) -> Option<&[u8]> {
            self.tls.as_ref().and_then(Option::as_deref)
        }

        /// A client for the sentinel at `url` (one of [`Self::sentinels`]).
        pub(crate) fn sentinel_client(&self, url: &str) -> RedisResult<redis::Client> {
            client(url, self.ca())
        }

        /// Asks the sentinels for the current primary's address and its `config-epoch`: the
        /// one named by the sentinel with the highest epoch (a sentinel that has not heard
        /// of a switch yet names the old primary under the old, lower epoch). The error is
        /// transient (I/O) unless every sentinel answered that it does not know the name.
        pub(crate) async fn primary(&self, timeout: Duration) -> RedisResult<((String, u16), u64)> {
            let views = self.views(timeout).await?;
            views
                .into_iter()
                .max_by_key(|v| v.epoch)
                .map(|v| (v.addr, v.epoch))
                .ok_or_else(|| RedisError::from((RedisKind::Io, "sentinel", "no answer".into())))
        }

        /// Every answering sentinel's view of the primary, asked concurrently. Returns once
        /// all answered (or failed), or [`GRACE`] after the first answer, so that a sentinel
        /// that is down costs little; at least one view, or the reasons none came.
        pub(crate) async fn views(&self, timeout: Duration) -> RedisResult<Vec<View>> {
            use futures::stream::{FuturesUnordered, StreamExt};
            let mut asks: FuturesUnordered<_> = self
                .sentinels
                .iter()
                .map(|sentinel| async move {
                    let outcome = tokio::time::timeout(timeout, self.view_of(sentinel, timeout))
                        .await
                        .unwrap_or_else(|_| {
                            Err(RedisError::from((
                                RedisKind::Io,
                                "sentinel",
                                "timed out".into(),
                            )))
                        });
                    (sentinel, outcome)
                })
                .collect();
            let mut views = Vec::new();
            let mut reasons = Vec::new();
            let mut unknown = 0;
            let mut grace: Option<tokio::time::Instant> = None;
            loop {
                let next = match grace {
                    Some(until) => match tokio::time::timeout_at(until, asks.next()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    },
                    None => asks.next().await,
                };
                let Some((sentinel, outcome)) = next else {
                    break;
                };
                match outcome {
                    Ok(Some(view)) => {
                        views.push(view);
                        grace.get_or_insert_with(|| tokio::time::Instant::now() + GRACE);
                    }
                    Ok(None) => {
                        unknown += 1;
                        reasons.push(format!("{sentinel}: unknown primary name"));
                    }
                    Err(e) => reasons.push(format!("{sentinel}: {e}")),
                }
            }
            if !views.is_empty() {
                return Ok(views);
            }
            let detail = format!(
                "no sentinel gave the address of {:?} ({})",
                self.master,
                reasons.join("; ")
            );
            if unknown > 0 && unknown == self.sentinels.len() {
                Err(RedisError::from((
                    RedisKind::MasterNameNotFoundBySentinel,
                    "sentinel",
                    detail,
                )))
            } else {
                Err(RedisError::from((RedisKind::Io, "sentinel", detail)))
            }
        }

        /// One sentinel's view; `None` when it does not know the name.
        async fn view_of(&self, sentinel: &str, timeout: Duration) -> RedisResult<Option<View>> {
            let client = client(sentinel, self.ca())?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let addr = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await?;
            let Some(addr) = addr else {
                return Ok(None);
            };
            let fields: Vec<String> = redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(&self.master)
                .query_async(&mut conn)
                .await?;
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|kv| kv[0] == name)
                    .and_then(|kv| kv.get(1))
                    .map(String::as_str)
                    .unwrap_or_default()
            };
            let flags = field("flags");
            Ok(Some(View {
                addr,
                epoch: field("config-epoch").parse().unwrap_or(0),
                failover_in_progress: flags.contains("failover_in_progress"),
                odown: flags.contains("o_down"),
            }))
        }
    }

    /// How long [`SentinelTarget::views`] waits for more sentinels after the first answer.
    const GRACE: Duration = Duration::from_millis(150);

    /// What one sentinel says about the primary.
    #[derive(Debug, Clone)]
    pub(crate) struct View {
        /// The address it names (the promoted replica's once a failover promoted it).
        pub(crate) addr: (String, u16),
        /// Its `config-epoch` for the primary.
        pub(crate) epoch: u64,
        /// It is running a failover of the primary.
        pub(crate) failover_in_progress: bool,
        /// It considers the primary objectively down.
        pub(crate) odown: bool,
    }
}

/// The command connection: one multiplexed connection (to the server, or to the primary that
/// Sentinel named), or a cluster connection that routes each command by its key's slot.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    /// `WAIT replicas timeout_ms` on the primary that holds `key`: how many replicas have
    /// every write made on that primary so far (Redis 7 counts the server's replication
    /// offset, so it does not matter which connection wrote).
    #[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
    pub(crate) async fn wait(
        &mut self,
        replicas: usize,
        timeout_ms: u64,
        key: &str,
    ) -> RedisResult<usize> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout_ms);
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(key, SlotAddr::Master);
                let v = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(v)?)
            }
        }
    }
}

impl Conn {
    /// Every key matching `pattern` (SCAN ... MATCH), on the server, or with Redis Cluster on
    /// every primary (each has its own keys and its own cursor).
    pub(crate) async fn scan_keys(&mut self, pattern: &str) -> RedisResult<Vec<String>> {
        let scan = |cursor: u64| {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            cmd
        };
        let mut found = Vec::new();
        match self {
            Conn::Single(c) => {
                let mut cursor = 0u64;
                loop {
                    let (next, keys): (u64, Vec<String>) = scan(cursor).query_async(c).await?;
                    found.extend(keys);
                    if next == 0 {
                        return Ok(found);
                    }
                    cursor = next;
                }
            }
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => {
                use redis::cluster_routing::{
                    MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo,
                };
                use redis::{ErrorKind as RedisKind, RedisError};
                // The first page of every primary names the primaries; then each is followed
                // by address until its cursor comes back to 0.
                let first = c
                    .route_command(
                        scan(0),
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await?;
                let unexpected = |detail: String| {
                    RedisError::from((RedisKind::UnexpectedReturnType, "cluster SCAN", detail))
                };
                let Value::Map(pages) = first else {
                    return Err(unexpected("the primaries' replies are not a map".into()));
                };
                for (address, page) in pages {
                    let address: String = redis::from_redis_value(address)?;
                    let (host, port) = address
                        .rsplit_once(':')
                        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                        .ok_or_else(|| unexpected(format!("bad node address {address:?}")))?;
                    let (mut next, keys): (u64, Vec<String>) = redis::from_redis_value(page)?;
                    found.extend(keys);
                    while next != 0 {
                        let route = SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        };
                        let v = c
                            .route_command(scan(next), RoutingInfo::SingleNode(route))
                            .await?;
                        let (cursor, keys): (u64, Vec<String>) = redis::from_redis_value(v)?;
                        found.extend(keys);
                        next = cursor;
                    }
                }
                Ok(found)
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn single_urls() {
        assert!(matches!(
            parse("redis://a:1/0", None),
            Ok(Target::Single(_))
        ));
        assert!(parse("http://a", None).is_err_and(|e| e.contains("unsupported scheme")));
    }

    #[cfg(feature = "sentinel")]
    #[test]
    fn sentinel_urls() {
        let Ok(Target::Sentinel(s)) = parse("redis+sentinel://u:p@a:1,b/mymaster/2", None) else {
            panic!("sentinel form");
        };
        assert_eq!(s.sentinels, vec!["redis://a:1", "redis://b:26379"]);
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.data_url("h", 7), "redis://u:p@h:7/2");
        assert!(parse("redis+sentinel://a:1", None).is_err());
        assert!(parse("redis+sentinel://a:x/m", None).is_err());
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn cluster_urls() {
        let Ok(Target::Cluster(c)) = parse("redis+cluster://h1:7000,h2:7001", None) else {
            panic!("cluster form");
        };
        assert_eq!(c.nodes, vec!["redis://h1:7000", "redis://h2:7001"]);
        assert!(parse("redis+cluster://a:1/0", None).is_err());
    }

    #[cfg(all(feature = "tls", feature = "sentinel", feature = "cluster"))]
    #[test]
    fn tls_urls() {
        let Ok(Target::Sentinel(s)) = parse("rediss+sentinel://s1,s2:1/m", None) else {
            panic!("TLS sentinel form");
        };
        assert_eq!(s.sentinels, vec!["rediss://s1:26379", "rediss://s2:1"]);
        assert_eq!(s.data_url("h", 7), "rediss://h:7");
        let Ok(Target::Cluster(c)) = parse("rediss+cluster://u:p@h1:7000,h2", Some(b"ca")) else {
            panic!("TLS cluster form");
        };
        assert_eq!(
            c.nodes,
            vec!["rediss://u:p@h1:7000", "rediss://u:p@h2:6379"]
        );
        assert_eq!(c.tls_ca.as_deref(), Some(&b"ca"[..]));
    }

    /// A URL that needs a feature this build leaves out is refused, naming the feature.
    #[test]
    fn urls_name_missing_features() {
        let refused = |url: &str, feature: &str| {
            parse(url, None).is_err_and(|e| e.contains(&format!("`{feature}` feature")))
        };
        assert_eq!(refused("rediss://h:1", "tls"), !cfg!(feature = "tls"));
        assert_eq!(
            refused("redis+sentinel://s/m", "sentinel"),
            !cfg!(feature = "sentinel")
        );
        assert_eq!(
            refused("redis+cluster://h:1", "cluster"),
            !cfg!(feature = "cluster")
        );
    }
}
