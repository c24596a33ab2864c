//! The sidecar in the data path (`docs/design.md`, rule 11): an L4 proxy in
//! front of the app, so that only the holder's app answers, kept-alive
//! connections included.
//!
//! Two listeners: the **front** port, which the Service targets, and the
//! **peer** port, which only other pods of the group reach. A connection
//! takes the route of its listener when it opens ([`route`]) and lives as
//! long as that route stays the same ([`keeps`]):
//! - on the active pod, both serve locally: bytes are spliced to the app on
//!   the pod's loopback;
//! - on any other pod, the front port forwards to the holder's peer port,
//!   and the peer port waits (it forwards only a connection moved at a
//!   switch, below, once per switch: no loops);
//! - with no holder known, or on the holder before its Lease write lands, a new
//!   connection waits for a route, at most `--proxy-route-wait`, then is
//!   closed.
//!
//! When the route changes (this pod demoted, the holder changed) no byte of
//! the old route's app reaches a client afterwards: a connection that took
//! it is closed (once an answer in flight has reached its client), and the
//! client's next connection takes the new route; except a connection
//! nothing has passed on yet, and an HTTP/1.1 one between requests, which
//! are moved: its next request takes the new route on the same client
//! connection ([`next_request_is_http1`]).
//!
//! A forwarded connection is served once the holder's peer port sends one
//! byte ([`SERVED`]) after connecting it to its app. Before that the
//! forwarding side has read nothing from the client, so a connection that
//! reached a pod which is not (or no longer) the holder is sent on by the
//! next route instead of being closed: at a switch only the connections
//! that were being served are cut.
//!
//! That acknowledgement is asked for, so that sidecars of two builds serve
//! one group during an upgrade (`docs/design.md`, rule 11's version skew):
//! a forwarding side opens with [`HELLO`] and waits for [`SERVED`] only
//! when the holder's pod carries [`PEER_PROTOCOL_ANNOTATION`], which this
//! build puts on its own pod at start; else (a holder of an earlier build)
//! it splices at once, as that build's forwarders do. The peer port sends
//! [`SERVED`] only after a [`HELLO`]; any other first bytes are a client's,
//! forwarded by an earlier build, and go to the app untouched.

mod holder;
mod peers;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::Stream;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, runtime::watcher};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    contract::{PEER_PROTOCOL, PEER_PROTOCOL_ANNOTATION, Role, Status},
    metrics::Metrics,
    telemetry::ErrorChain,
};
pub use holder::tee as tee_lease_holder;
use peers::{Lookups, Peers, Source, peer_of};

/// Which of the proxy's two listeners a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The port the Service targets.
    Front,
    /// The port other pods of the group forward to.
    Peer,
}

impl Listener {
    pub fn label(self) -> &'static str {
        match self {
            Listener::Front => "front",
            Listener::Peer => "peer",
        }
    }
}

/// The holder's pod as a forwarding side needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub ip: IpAddr,
    /// Its peer port takes a [`HELLO`] and acknowledges with [`SERVED`]:
    /// the pod carries [`PEER_PROTOCOL_ANNOTATION`]. A pod of an earlier
    /// build does not, and its peer port passes every byte to its app.
    pub acks: bool,
}

/// Where a connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the app beside us.
    Local,
    /// To the holder's peer port at this address.
    Forward(Peer),
    /// Nowhere yet: hold the connection until a route appears.
    Wait,
}

/// What the proxy knows, from the sidecar's status and where the holder's
/// pod is (the group's table, or a lookup).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// This pod's outward role is active: it holds the Lease within its
    /// deadline and is not handing it over (its active label may follow).
    pub active: bool,
    pub me: String,
    /// The Lease's holder, as its watch last said it.
    pub holder: Option<String>,
    /// A pod that holds or held the Lease, by name, and its peer.
    pub holder_ip: Option<(String, Peer)>,
}

impl View {
    /// The view of a sidecar's status (its outward role), the Lease's
    /// holder, and where the holder's pod is known to be, if it is.
    pub fn of(
        status: &Status,
        me: &str,
        holder: Option<String>,
        known: Option<(String, Peer)>,
    ) -> View {
        View {
            active: status.role == Some(Role::Active),
            me: me.to_owned(),
            holder,
            holder_ip: known,
        }
    }
}

/// The route a new connection on `listener` takes.
pub fn route(view: &View, listener: Listener) -> Route {
    if view.active {
        return Route::Local;
    }
    if listener == Listener::Peer {
        // Only the holder serves a forwarded connection: it waits here for
        // our label (the holder's label lands after its Lease write).
        return Route::Wait;
    }
    match (&view.holder, &view.holder_ip) {
        (Some(holder), Some((name, peer))) if holder != &view.me && holder == name => {
            Route::Forward(*peer)
        }
        // No holder, the holder is us and not yet labelled, or its IP is
        // still being looked up.
        _ => Route::Wait,
    }
}

/// Whether a connection that took `taken` lives on under `now`: only while
/// the route is unchanged. A holder looked up again and found to announce
/// the peer protocol now is the same route: a connection already spliced
/// to it is served as it is.
pub fn keeps(taken: Route, now: Route) -> bool {
    match (taken, now) {
        (Route::Forward(a), Route::Forward(b)) => a.ip == b.ip,
        _ => taken == now,
    }
}

/// The routes of both listeners at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routes {
    pub front: Route,
    pub peer: Route,
}

impl Routes {
    pub fn of(view: &View) -> Routes {
        Routes {
            front: route(view, Listener::Front),
            peer: route(view, Listener::Peer),
        }
    }

    pub fn get(&self, listener: Listener) -> Route {
        match listener {
            Listener::Front => self.front,
            Listener::Peer => self.peer,
        }
    }
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            front: Route::Wait,
            peer: Route::Wait,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the proxy's {listener} port {addr}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where the proxy listens and connects, from the sidecar's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub me: String,
    pub front: SocketAddr,
    pub peer: SocketAddr,
    /// The app, on the pod's loopback.
    pub app: (String, u16),
    pub route_wait: Duration,
    pub api_timeout: Duration,
    pub retry_period: Duration,
}

impl Config {
    pub fn from_settings(s: &crate::Settings) -> Config {
        Config {
            me: s.pod_name.clone(),
            front: s.proxy_addr,
            peer: s.proxy_peer_addr,
            app: (
                s.probe_host.clone(),
                s.proxy_app_port.unwrap_or(s.probe_port),
            ),
            route_wait: s.proxy_route_wait,
            api_timeout: s.api_timeout,
            retry_period: s.retry_period,
        }
    }
}

/// The bound listeners, ready to [`Proxy::run`].
pub struct Proxy {
    config: Config,
    front: TcpListener,
    peer: TcpListener,
}

impl Proxy {
    /// Binds both ports, so that a port in use fails the sidecar at start.
    pub async fn bind(config: Config) -> Result<Proxy, Error> {
        let bind = |listener: Listener, addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| Error::Bind {
                listener: listener.label(),
                addr,
                source,
            })
        };
        let front = bind(Listener::Front, config.front).await?;
        let peer = bind(Listener::Peer, config.peer).await?;
        Ok(Proxy {
            config,
            front,
            peer,
        })
    }

    /// Serves until `stop`: follows the status (the outward role), the
    /// Lease's holder as its watch says it (`holder`, from
    /// [`tee_lease_holder`]) and the group's pods (`group`, a watch of the
    /// pods of our group) for routes; accepts on both listeners, and cuts
    /// connections whose route changed.
    pub async fn run(
        self,
        status: watch::Receiver<Status>,
        holder: watch::Receiver<Option<String>>,
        group: impl Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Send + 'static,
        pods: Api<Pod>,
        metrics: Metrics,
        stop: CancellationToken,
    ) {
        let Proxy {
            config,
            front,
            peer,
        } = self;
        let config = Arc::new(config);
        let (routes_tx, routes_rx) = watch::channel(Routes::default());
        let (peers_tx, peers_rx) = watch::channel(Peers::default());
        let stale = Arc::new(Notify::new());
        tokio::spawn(announce(config.clone(), pods.clone(), stop.clone()).in_current_span());
        let watching = stop.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    () = peers::keep(group, peers_tx) => {}
                    () = watching.cancelled() => {}
                }
            }
            .in_current_span(),
        );
        let router = tokio::spawn(
            follow(
                config.clone(),
                status,
                holder,
                peers_rx,
                pods,
                routes_tx,
                stale.clone(),
                stop.clone(),
            )
            .in_current_span(),
        );
        let shared = Shared {
            config,
            routes: routes_rx,
            stale,
            metrics,
            stop: stop.clone(),
        };
        info!(front = %shared.config.front, peer = %shared.config.peer, app = ?shared.config.app, "proxy listening");
        let _ = tokio::join!(
            accept(front, Listener::Front, shared.clone()),
            accept(peer, Listener::Peer, shared),
            router,
        );
    }
}

#[derive(Clone)]
struct Shared {
    config: Arc<Config>,
    routes: watch::Receiver<Routes>,
    stale: Arc<Notify>,
    metrics: Metrics,
    stop: CancellationToken,
}

/// Turns the sidecar's status and the Lease's holder into routes. Where a
/// new holder is comes from the group's table in the same step as its
/// name; only a holder the table does not know, or an address a forward
/// could not reach, is looked up (a Pod GET), and new connections wait for
/// that meanwhile.
#[allow(clippy::too_many_arguments)]
async fn follow(
    config: Arc<Config>,
    mut status: watch::Receiver<Status>,
    mut holders: watch::Receiver<Option<String>>,
    mut peers: watch::Receiver<Peers>,
    pods: Api<Pod>,
    routes: watch::Sender<Routes>,
    stale: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut lookups = Lookups::default();
    loop {
        let current = status.borrow_and_update().clone();
        let holder = holders.borrow_and_update().clone();
        lookups.handle_holder(holder.as_deref());
        // What the table says of the holder now, kept with a lookup made
        // from here: a later change of it is newer than the lookup.
        let (source, table_then) = {
            let table = peers.borrow_and_update();
            let said = holder.as_deref().and_then(|h| table.get(h));
            (lookups.source(&config.me, &table), said)
        };
        let known = match (source, &holder) {
            (Some(Source::Known(peer)), Some(holder)) => Some((holder.clone(), peer)),
            _ => None,
        };
        let view = View::of(&current, &config.me, holder.clone(), known);
        // At once, lookup or not: connections forwarded to a former holder
        // are cut now, and new ones wait for the lookup.
        routes.send_if_modified(|r| publish(r, Routes::of(&view)));
        if let (Some(Source::LookUp), Some(holder)) = (source, holder) {
            let get = tokio::time::timeout(config.api_timeout, pods.get(&holder));
            // The table may learn the pod meanwhile, or the holder change.
            let got = tokio::select! {
                got = get => got,
                changed = status.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => return,
                },
                () = changed(&mut holders) => continue,
                () = changed(&mut peers) => continue,
                () = stop.cancelled() => return,
            };
            match got {
                Ok(Ok(pod)) => {
                    if let Some(peer) = peer_of(&pod) {
                        debug!(%holder, ip = %peer.ip, acks = peer.acks, "holder looked up");
                        lookups.handle_looked_up(&holder, peer, table_then);
                        continue;
                    }
                    warn!(%holder, "the holder has no pod IP yet");
                }
                Ok(Err(e)) => warn!(%holder, error = %ErrorChain(&e), "looking up the holder's IP"),
                Err(_) => warn!(%holder, "looking up the holder's IP timed out"),
            }
            // New connections wait meanwhile; retry soon.
            tokio::select! {
                _ = tokio::time::sleep(config.retry_period) => continue,
                _ = status.changed() => continue,
                () = changed(&mut holders) => continue,
                () = changed(&mut peers) => continue,
                _ = stop.cancelled() => return,
            }
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            () = changed(&mut holders) => {}
            () = changed(&mut peers) => {}
            // A forward failed to connect: the holder's pod may have been
            // re-created under the same name with another IP.
            _ = stale.notified() => lookups.handle_unreachable(),
            _ = stop.cancelled() => return,
        }
    }
}

/// Resolves when the holder or the group's table changes; never once its
/// watch has ended (the sidecar stops).
async fn changed<T>(input: &mut watch::Receiver<T>) {
    if input.changed().await.is_err() {
        std::future::pending().await
    }
}

/// Puts [`PEER_PROTOCOL_ANNOTATION`] on our own pod, retrying until the API
/// takes it: the candidate's first probes take longer than one write, so
/// the pod carries it before it can hold the Lease. Should it not, the
/// group's forwarders splice to it as to an earlier build: served, though
/// a connection caught at a switch is cut rather than rerouted.
async fn announce(config: Arc<Config>, pods: Api<Pod>, stop: CancellationToken) {
    let patch = kube::api::Patch::Merge(serde_json::json!({
        "metadata": {"annotations": {PEER_PROTOCOL_ANNOTATION: PEER_PROTOCOL}}
    }));
    let pp = kube::api::PatchParams::default();
    loop {
        match tokio::time::timeout(config.api_timeout, pods.patch(&config.me, &pp, &patch)).await {
            Ok(Ok(_)) => {
                debug!("peer protocol announced on our pod");
                return;
            }
            // Refused (an admission policy of an earlier install): asking
            // again would not change that.
            Ok(Err(kube::Error::Api(e))) if (400..500).contains(&e.code) => {
                warn!(code = e.code, reason = %e.reason, message = %e.message,
                    "our pod may not be annotated with the peer protocol: the group's forwarders splice to it as to an earlier build");
                return;
            }
            Ok(Err(e)) => {
                warn!(error = %ErrorChain(&e), "annotating our pod with the peer protocol")
            }
            Err(_) => warn!("annotating our pod with the peer protocol timed out"),
        }
        tokio::select! {
            () = tokio::time::sleep(config.retry_period) => {}
            () = stop.cancelled() => return,
        }
    }
}

fn publish(current: &mut Routes, new: Routes) -> bool {
    if *current == new {
        return false;
    }
    info!(front = ?new.front, peer = ?new.peer, "proxy routes");
    *current = new;
    true
}

async fn accept(listener: TcpListener, which: Listener, shared: Shared) {
    let mut open = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = open.join_next(), if !open.is_empty() => continue,
            _ = shared.stop.cancelled() => break,
        };
        match accepted {
            Ok((client, from)) => {
                let span = info_span!("connection", listener = which.label(), %from);
                open.spawn(serve(client, which, shared.clone()).instrument(span));
            }
            Err(e) => {
                warn!(listener = which.label(), error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // The sidecar exits: each connection ends as at a switch, an answer
    // in flight passed on first ([`splice`]); whatever is left after that
    // bound is dropped with the set.
    let _ = tokio::time::timeout(2 * ANSWER_BOUND, async {
        while open.join_next().await.is_some() {}
    })
    .await;
}

/// The byte the holder's peer port sends once it has connected a forwarded
/// connection to its app. Until it comes, the forwarding side has read
/// nothing from its client, so it may still take another route: a
/// connection forwarded to a pod that stopped being the holder (or never
/// became it) is rerouted instead of failed.
const SERVED: u8 = 1;

/// What a forwarding side of this build sends first, to a holder whose pod
/// says its peer port answers it ([`PEER_PROTOCOL_ANNOTATION`]): it asks
/// for [`SERVED`]. A NUL, then text: no client's protocol opens so (PROXY
/// protocol v2 picks its signature alike).
pub const HELLO: &[u8; 8] = b"\0baton/1";

/// How long the peer port waits for a connection's first bytes before it
/// takes it for a client's forwarded by an earlier build whose protocol
/// has the server speak first. A hello is written at once after the
/// connect, so it is here long before.
const HELLO_WAIT: Duration = Duration::from_secs(1);

/// What the first bytes of a connection to the peer port say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// A [`HELLO`]: a forwarder of this build, which waits for [`SERVED`].
    Hello,
    /// A client's bytes, forwarded by an earlier build: for the app, as
    /// they are, and nothing of ours before its answer.
    Client,
    /// A prefix of the hello so far: read on.
    Undecided,
}

/// Classifies the first bytes read on the peer port.
pub fn opening(first: &[u8]) -> Opening {
    let n = first.len().min(HELLO.len());
    if first[..n] != HELLO[..n] {
        Opening::Client
    } else if n == HELLO.len() {
        Opening::Hello
    } else {
        Opening::Undecided
    }
}

/// Reads a peer connection's opening: whether it said [`HELLO`], and the
/// client's bytes read meanwhile (for the app), or None if it closed.
async fn read_opening(client: &mut TcpStream, stop: &CancellationToken) -> Option<(bool, Vec<u8>)> {
    let mut first = Vec::with_capacity(HELLO.len());
    let deadline = tokio::time::Instant::now() + HELLO_WAIT;
    loop {
        match opening(&first) {
            Opening::Hello => return Some((true, Vec::new())),
            Opening::Client => return Some((false, first)),
            Opening::Undecided => {}
        }
        // Never past the hello: what follows is the client's.
        let mut more = [0u8; HELLO.len()];
        let want = HELLO.len() - first.len();
        tokio::select! {
            read = client.read(&mut more[..want]) => match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => first.extend_from_slice(&more[..n]),
            },
            () = tokio::time::sleep_until(deadline) => return Some((false, first)),
            () = stop.cancelled() => return None,
        }
    }
}

/// What opening a route gave.
enum Opened {
    /// Spliced from here on.
    Served(TcpStream),
    /// The holder's peer closed before serving it, or the route changed
    /// first: the client's bytes are untouched, take the next route.
    NotServed,
    /// Nothing listens there.
    Unreachable,
}

/// One connection: wait for a route, connect (and, forwarded, wait for the
/// holder to serve it), splice until done or cut.
async fn serve(mut client: TcpStream, which: Listener, shared: Shared) {
    // On the peer port: a forwarder of this build asks for the
    // acknowledgement; an earlier build's sends its client's bytes at once.
    let (mut acked, mut early) = if which == Listener::Peer {
        match read_opening(&mut client, &shared.stop).await {
            Some(opened) => opened,
            None => return,
        }
    } else {
        (false, Vec::new())
    };
    let mut routes = shared.routes.clone();
    // Whether the connection began as HTTP/1.x, from its first bytes.
    let http1 = OnceLock::new();
    // The listener whose routes the connection takes: its own, until a
    // peer connection is moved at a switch.
    let mut routing = which;
    // Once per route a connection takes: again only for one moved at a
    // switch (unused, or HTTP/1.1 between requests: [`Spliced::Untouched`],
    // [`next_request_is_http1`]).
    loop {
        let deadline = tokio::time::Instant::now() + shared.config.route_wait;
        let mut tried = false;
        let (taken, mut server) = loop {
            // A route that is there is taken even past the deadline (a timeout
            // polls its future first): the tries end here.
            if tried && tokio::time::Instant::now() >= deadline {
                shared.metrics.proxy_connection(which.label(), "no_route");
                debug!("not served within the wait; closed");
                return;
            }
            tried = true;
            let waited = tokio::time::timeout_at(
                deadline,
                routes.wait_for(|r| r.get(routing) != Route::Wait),
            )
            .await
            .map(|r| r.map(|r| r.get(routing)));
            let taken = match waited {
                Ok(Ok(r)) => r,
                _ => {
                    shared.metrics.proxy_connection(which.label(), "no_route");
                    debug!("no route within the wait; closed");
                    return;
                }
            };
            match open(taken, routing, &shared, &mut routes, deadline).await {
                Opened::Served(server) => break (taken, server),
                _ if shared.stop.is_cancelled() => return,
                Opened::Unreachable => {
                    // Nothing listens there: the app is down (killed, or
                    // stopping as its pod is deleted), or the holder's pod has
                    // another IP now. Nothing of the client's was read: it
                    // waits for the next route, as a connection without one.
                    shared
                        .metrics
                        .proxy_connection(which.label(), "unreachable");
                    if matches!(taken, Route::Forward(_)) {
                        shared.stale.notify_one();
                    }
                }
                Opened::NotServed => {
                    shared.metrics.proxy_connection(which.label(), "rerouted");
                    debug!(?taken, "not served there; taking the next route");
                }
            }
            // Not at once again to the same place: until the route changes,
            // or briefly.
            let _ =
                tokio::time::timeout(REROUTE_PAUSE, routes.wait_for(|r| r.get(routing) != taken))
                    .await;
        };
        // Once, to the first route: the forwarder splices after it.
        if std::mem::take(&mut acked) && client.write_all(&[SERVED]).await.is_err() {
            return;
        }
        // An earlier build's forwarder's first bytes, sent on here rather
        // than through the splice: this route has them.
        let sent_early = !early.is_empty();
        if sent_early && server.write_all(&std::mem::take(&mut early)).await.is_err() {
            return;
        }
        let kind = if taken == Route::Local {
            "local"
        } else {
            "forward"
        };
        shared.metrics.proxy_connection(which.label(), kind);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let _open = shared.metrics.proxy_open();
        let mut watched = routes.clone();
        let switched = async move {
            let _ = watched.wait_for(|r| !keeps(taken, r.get(routing))).await;
        };
        let ended = splice(&mut client, &mut server, switched, &shared.stop, &http1).await;
        if ended == Spliced::Done {
            // Both sockets drop here: the client and the app see the close at once.
            return;
        }
        // Nothing more of the old route's app reaches the client.
        drop(server);
        // Only a connection that began as HTTP/1.x is held at a switch: any
        // other is closed at once, before its client sends more into it.
        let between_requests = ended == Spliced::Switched && http1.get() == Some(&true);
        if ended == Spliced::Untouched && !sent_early
            || between_requests && next_request_is_http1(&client, &shared.stop).await
        {
            shared.metrics.proxy_connection(which.label(), "moved");
            debug!(
                ?taken,
                ?ended,
                "route changed; the connection takes the new one"
            );
            // On the peer port too: the pod that forwarded this connection
            // moves it at its own switch, just after ours, and a request
            // it sent on meanwhile goes on to the new holder from here, as
            // a client's would (a peer port forwards only a connection
            // moved this way, once per switch: no loop).
            routing = Listener::Front;
            continue;
        }
        shared.metrics.proxy_cut(which.label());
        debug!(?taken, ?ended, http1 = ?http1.get(), "route changed; connection closed");
        return;
    }
}

/// How long a connection whose route changed between requests is kept for
/// its client's next one. A busy client sends it well within; an idle one
/// meets the close later, when it is less likely to be sending. Short,
/// because the proxy cannot tell a finished answer from a paused one: a
/// stream the app was still sending (server-sent events, a long poll)
/// learns of the switch only this much later than at once.
const NEXT_REQUEST_WAIT: Duration = Duration::from_secs(1);

/// The longest request line looked for.
const REQUEST_LINE_MAX: usize = 8 * 1024;

/// After a switch, whether the client's next bytes (peeked, left in the
/// socket for the next route to read) begin an HTTP/1.x request line. An
/// HTTP/1.1 client that does not pipeline (none of the common ones does)
/// sends its next request only once it has the whole answer to the last,
/// so a request line then is a new exchange, which any pod's app may
/// answer: the connection takes the new route instead of being closed
/// under a request the client may be sending that moment. Anything else
/// (HTTP/2 frames, TLS, a protocol the proxy does not know, the rest of a
/// request body) is not a request line, and the connection is closed as
/// before; so is one that sends nothing within [`NEXT_REQUEST_WAIT`], or
/// when the sidecar exits.
async fn next_request_is_http1(client: &TcpStream, stop: &CancellationToken) -> bool {
    let bound = tokio::time::Instant::now() + NEXT_REQUEST_WAIT;
    let mut line = vec![0u8; REQUEST_LINE_MAX];
    let mut seen = 0;
    loop {
        let peeked = tokio::select! {
            peeked = tokio::time::timeout_at(bound, client.peek(&mut line)) => peeked,
            () = stop.cancelled() => return false,
        };
        let n = match peeked {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        match request_line(&line[..n]) {
            Some(is) => return is,
            // Part of a line: the rest is on its way (peek returns at once
            // while any byte waits, so wait a little before the next).
            None if n > seen => seen = n,
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Whether `bytes` begin an HTTP/1.x request line (`method SP target SP
/// HTTP/1.x CRLF`): `Some(true)` or `Some(false)`, or `None` while they
/// are a part of one that could still be.
pub fn request_line(bytes: &[u8]) -> Option<bool> {
    // A part of a line that could still be one, until it is too long.
    let partial = || (bytes.len() >= REQUEST_LINE_MAX).then_some(false);
    let method = bytes.iter().take_while(|b| is_tchar(**b)).count();
    match bytes.get(method) {
        None => return partial(),
        Some(b' ') if method > 0 => {}
        Some(_) => return Some(false),
    }
    let rest = &bytes[method + 1..];
    let target = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    match rest.get(target) {
        None => return partial(),
        Some(b' ') if target > 0 => {}
        Some(_) => return Some(false),
    }
    let version = &rest[target + 1..];
    let fits = |at: usize, b: u8| match at {
        0..=6 => b == b"HTTP/1."[at],
        7 => b == b'0' || b == b'1',
        8 => b == b'\r',
        _ => b == b'\n',
    };
    if !version
        .iter()
        .take(10)
        .enumerate()
        .all(|(at, b)| fits(at, *b))
    {
        return Some(false);
    }
    if version.len() < 10 {
        return partial();
    }
    Some(true)
}

/// A character of an HTTP token, which a method is.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// How a spliced connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spliced {
    /// Either side closed, or the sidecar stops (once the answer to what
    /// the client had already sent has reached it).
    Done,
    /// The route changed, and the client has the answer to all it sent:
    /// at once, or once that answer had reached it.
    Switched,
    /// The route changed, and no answer to what the client had sent came
    /// within [`ANSWER_BOUND`].
    SwitchedUnanswered,
    /// The route changed before a byte passed either way: as good as a new
    /// connection (a client's pool holds some that it has not used yet).
    Untouched,
}

/// After a switch, how long the answer to bytes the app already received
/// may take to begin, and how long it may pause before it is taken as
/// whole.
const ANSWER_BOUND: Duration = Duration::from_secs(1);
const ANSWER_QUIET: Duration = Duration::from_millis(20);

/// Splices `client` and `server` both ways until either closes or
/// `switched` completes. At a switch nothing more of the client's is sent
/// on; a connection whose client had sent bytes the app has not answered
/// yet (a request in flight) gets that answer first, within
/// [`ANSWER_BOUND`], then is closed: the app already has the request, so
/// delivering its answer lets it do nothing new, and the client does not
/// lose a request it sent before the switch. An idle connection is closed
/// at once (rule 11). The sidecar's exit (`stop`) closes its connections
/// the same way: it comes after the handover and the drain, and the
/// connections still open then are forwarded ones, whose client may be
/// awaiting the holder's answer. Both directions are copied concurrently
/// (`copy_bidirectional`), so a stream that is busy both ways never waits
/// on itself.
async fn splice(
    client: &mut TcpStream,
    server: &mut TcpStream,
    switched: impl std::future::Future<Output = ()>,
    stop: &CancellationToken,
    http1: &OnceLock<bool>,
) -> Spliced {
    // The client sent bytes after the app's last ones: it awaits an answer.
    let awaiting = AtomicBool::new(false);
    let spoke = AtomicBool::new(false);
    let ended = {
        let mut from_client = Marking {
            stream: client,
            awaiting: &awaiting,
            spoke: &spoke,
            marks: true,
            http1: Some(http1),
        };
        let mut from_app = Marking {
            stream: server,
            awaiting: &awaiting,
            spoke: &spoke,
            marks: false,
            http1: None,
        };
        tokio::select! {
            // A switch first: bytes that arrive with it are not sent on.
            biased;
            () = switched => Spliced::Switched,
            // The sidecar's exit ends its connections as a switch does.
            () = stop.cancelled() => Spliced::Done,
            _ = tokio::io::copy_bidirectional(&mut from_client, &mut from_app) => {
                return Spliced::Done;
            }
        }
    };
    if ended == Spliced::Switched && !spoke.load(Ordering::Relaxed) {
        return Spliced::Untouched;
    }
    if awaiting.load(Ordering::Relaxed) {
        let (mut server_in, _) = server.split();
        let (_, mut client_out) = client.split();
        if !finish_answer(&mut server_in, &mut client_out).await && ended == Spliced::Switched {
            return Spliced::SwitchedUnanswered;
        }
    }
    ended
}

/// A side of a spliced connection that notes who spoke last: bytes read
/// from the client set `awaiting` (`marks` true), bytes read from the app
/// clear it.
struct Marking<'a> {
    stream: &'a mut TcpStream,
    awaiting: &'a AtomicBool,
    /// Set by a byte read from either side.
    spoke: &'a AtomicBool,
    marks: bool,
    /// The client's side only: whether the connection's first bytes began
    /// an HTTP/1.x request line, set at its first read.
    http1: Option<&'a OnceLock<bool>>,
}

impl tokio::io::AsyncRead for Marking<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *self.stream).poll_read(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.awaiting.store(self.marks, Ordering::Relaxed);
            self.spoke.store(true, Ordering::Relaxed);
            if let Some(http1) = self.http1 {
                http1.get_or_init(|| request_line(&buf.filled()[before..]) == Some(true));
            }
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Marking<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.stream).poll_shutdown(cx)
    }
}

/// Passes on what the app sends until it ends, pauses for
/// [`ANSWER_QUIET`] after it began, or [`ANSWER_BOUND`] passes. Whether an
/// answer came and reached the client.
async fn finish_answer(
    server_in: &mut tokio::net::tcp::ReadHalf<'_>,
    client_out: &mut tokio::net::tcp::WriteHalf<'_>,
) -> bool {
    let bound = tokio::time::Instant::now() + ANSWER_BOUND;
    let mut answer = vec![0u8; BUFFER];
    let mut began = false;
    loop {
        let wait = match began {
            true => (tokio::time::Instant::now() + ANSWER_QUIET).min(bound),
            false => bound,
        };
        match tokio::time::timeout_at(wait, server_in.read(&mut answer)).await {
            Ok(Ok(n)) if n > 0 => {
                if client_out.write_all(&answer[..n]).await.is_err() {
                    return false;
                }
                began = true;
            }
            _ => return began,
        }
    }
}

/// The buffer of the answer passed on after a switch, as
/// `copy_bidirectional`'s.
const BUFFER: usize = 8 * 1024;

/// How long a connection that was not served where it went waits for
/// another route before it tries the same one again.
const REROUTE_PAUSE: Duration = Duration::from_millis(100);

/// Connects `taken`; a forwarded connection is served only once the
/// holder's peer port says so ([`SERVED`]).
async fn open(
    taken: Route,
    which: Listener,
    shared: &Shared,
    routes: &mut watch::Receiver<Routes>,
    deadline: tokio::time::Instant,
) -> Opened {
    let upstream = match taken {
        Route::Local => format!("{}:{}", shared.config.app.0, shared.config.app.1),
        Route::Forward(peer) => SocketAddr::new(peer.ip, shared.config.peer.port()).to_string(),
        Route::Wait => unreachable!("waited for a route"),
    };
    let mut server = match tokio::time::timeout_at(deadline, TcpStream::connect(&upstream)).await {
        Ok(Ok(s)) => s,
        failed => {
            debug!(%upstream, ?failed, "upstream unreachable; closed");
            return Opened::Unreachable;
        }
    };
    match taken {
        // A holder of an earlier build splices at once and sends nothing
        // of its own: so do we.
        Route::Local | Route::Forward(Peer { acks: false, .. }) => return Opened::Served(server),
        _ => {}
    }
    if server.write_all(HELLO).await.is_err() {
        return Opened::NotServed;
    }
    let mut served = [0u8];
    tokio::select! {
        read = server.read(&mut served) => match read {
            Ok(1) if served[0] == SERVED => Opened::Served(server),
            _ => Opened::NotServed,
        },
        _ = routes.wait_for(|r| r.get(which) != taken) => Opened::NotServed,
        () = tokio::time::sleep_until(deadline) => Opened::NotServed,
        () = shared.stop.cancelled() => Opened::NotServed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP")
    }

    /// A holder's pod of this build at `s`.
    fn peer(s: &str) -> Peer {
        Peer {
            ip: ip(s),
            acks: true,
        }
    }

    fn view(me: &str) -> View {
        View {
            me: me.into(),
            ..View::default()
        }
    }

    #[test]
    fn the_active_pod_serves_locally_on_both_listeners() {
        let v = View {
            active: true,
            holder: Some("web-0".into()),
            ..view("web-0")
        };
        assert_eq!(route(&v, Listener::Front), Route::Local);
        assert_eq!(route(&v, Listener::Peer), Route::Local);
    }

    #[test]
    fn a_passive_pod_forwards_front_connections_to_the_holder_it_knows() {
        let v = View {
            holder: Some("web-0".into()),
            holder_ip: Some(("web-0".into(), peer("10.0.0.7"))),
            ..view("web-1")
        };
        assert_eq!(route(&v, Listener::Front), Route::Forward(peer("10.0.0.7")));
    }

    #[test]
    fn the_peer_port_never_forwards_again() {
        let v = View {
            holder: Some("web-0".into()),
            holder_ip: Some(("web-0".into(), peer("10.0.0.7"))),
            ..view("web-1")
        };
        assert_eq!(route(&v, Listener::Peer), Route::Wait);
    }

    #[test]
    fn nothing_is_forwarded_to_a_new_holder_before_its_address_is_known() {
        // The IP we know belongs to the holder before.
        let v = View {
            holder: Some("web-2".into()),
            holder_ip: Some(("web-0".into(), peer("10.0.0.7"))),
            ..view("web-1")
        };
        assert_eq!(route(&v, Listener::Front), Route::Wait);
    }

    #[test]
    fn connections_wait_while_nobody_holds_the_lease() {
        let v = View {
            holder_ip: Some(("web-0".into(), peer("10.0.0.7"))),
            ..view("web-1")
        };
        assert_eq!(route(&v, Listener::Front), Route::Wait);
    }

    #[test]
    fn a_holder_not_yet_active_waits_and_never_forwards_to_itself() {
        let v = View {
            holder: Some("web-1".into()),
            holder_ip: Some(("web-1".into(), peer("10.0.0.8"))),
            ..view("web-1")
        };
        assert_eq!(route(&v, Listener::Front), Route::Wait);
        assert_eq!(route(&v, Listener::Peer), Route::Wait);
    }

    #[test]
    fn a_connection_lives_only_while_its_route_is_unchanged() {
        let (a, b) = (peer("10.0.0.7"), peer("10.0.0.8"));
        assert!(keeps(Route::Local, Route::Local));
        // Demoted: local connections are cut.
        assert!(!keeps(Route::Local, Route::Wait));
        assert!(!keeps(Route::Local, Route::Forward(a)));
        // The holder changed: forwarded ones too.
        assert!(keeps(Route::Forward(a), Route::Forward(a)));
        assert!(!keeps(Route::Forward(a), Route::Forward(b)));
        assert!(!keeps(Route::Forward(a), Route::Wait));
        assert!(!keeps(Route::Forward(a), Route::Local));
        // The same holder, its announcement seen on a later lookup.
        let unannounced = Peer { acks: false, ..a };
        assert!(keeps(Route::Forward(unannounced), Route::Forward(a)));
    }

    /// The metrics' text, asserted to hold every one of `needles`.
    fn assert_counted(metrics: &Metrics, needles: &[&str]) -> String {
        let text = metrics.encode();
        for needle in needles {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        text
    }

    /// Sends an HTTP/1.1 request line, reads the answer (the app's name).
    async fn exchange_http1(c: &mut tokio::io::BufReader<TcpStream>) -> String {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        c.get_mut()
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("sent");
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), c.read_line(&mut line)).await;
        assert!(matches!(read, Ok(Ok(n)) if n > 0), "an answer: {read:?}");
        line.trim().to_owned()
    }

    /// An app that answers each line with its name.
    async fn app(name: &'static str, ip: &str) -> u16 {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let l = TcpListener::bind((ip, 0)).await.expect("bind app");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = c.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(_)) = lines.next_line().await {
                        let _ = w.write_all(format!("{name}\n").as_bytes()).await;
                    }
                });
            }
        });
        port
    }

    /// A port nothing listens on at `ip` (bound, then released): a peer
    /// port both pods of a test can take, or an app that refuses.
    async fn free_port(ip: &str) -> u16 {
        TcpListener::bind((ip, 0))
            .await
            .expect("a free port")
            .local_addr()
            .expect("addr")
            .port()
    }

    /// Sends a line, reads the answer: the app's name, or None once closed.
    async fn ask(c: &mut tokio::io::BufReader<TcpStream>) -> Option<String> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let exchange = async {
            c.get_mut().write_all(b"who\n").await.ok()?;
            let mut line = String::new();
            match c.read_line(&mut line).await {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(line.trim().to_owned()),
            }
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .expect("an answer or a close within 5 s")
    }

    async fn connect(addr: SocketAddr) -> tokio::io::BufReader<TcpStream> {
        tokio::io::BufReader::new(TcpStream::connect(addr).await.expect("connect"))
    }

    fn status(role: Role, holder: Option<&str>) -> Status {
        Status {
            role: Some(role),
            holder: holder.map(str::to_owned),
            ..Status::default()
        }
    }

    struct Side {
        front: SocketAddr,
        status: Inputs,
        /// The API server this side's proxy calls.
        api: crate::testing::ScriptedApi,
        /// The sidecar's exit.
        stop: CancellationToken,
        /// The proxy's task.
        run: tokio::task::JoinHandle<()>,
    }

    /// A proxy's status and Lease holder, set together.
    struct Inputs {
        status: watch::Sender<Status>,
        holder: watch::Sender<Option<String>>,
    }

    impl Inputs {
        /// The sidecar shows `status`, and the Lease names its holder.
        fn send_replace(&self, status: Status) {
            self.holder
                .send_replace(status.holder.clone().filter(|h| !h.is_empty()));
            self.status.send_replace(status);
        }
    }

    /// What a side's proxy is told of the group's pods.
    #[derive(Clone, Copy)]
    struct Group {
        /// The pods announce the peer protocol (this build), or not (an
        /// earlier build's).
        announced: bool,
        /// web-0's IP as the group's watch lists it (web-1 at 127.0.0.1);
        /// None: the watch lists nothing. A Pod GET always finds web-0 at
        /// 127.0.0.2 and web-1 at 127.0.0.1.
        web0_listed_at: Option<&'static str>,
    }

    const GROUP: Group = Group {
        announced: true,
        web0_listed_at: Some("127.0.0.2"),
    };

    fn pod_of(name: &str, ip: &str, announced: bool) -> serde_json::Value {
        let annotations = match announced {
            true => serde_json::json!({PEER_PROTOCOL_ANNOTATION: PEER_PROTOCOL}),
            false => serde_json::json!({}),
        };
        serde_json::json!({
            "metadata": {"name": name, "annotations": annotations},
            "status": {"podIP": ip},
        })
    }

    /// A proxy for `me` on `ip` (its peer port `peer`), in front of an app
    /// named `me`, among [`GROUP`]: web-0 at 127.0.0.2, web-1 at 127.0.0.1.
    async fn side(me: &'static str, ip: &str, peer: u16, metrics: &Metrics) -> Side {
        let app_port = app(me, ip).await;
        side_of(me, ip, app_port, peer, metrics).await
    }

    /// [`side`] in front of an app already listening on `ip:app_port`.
    async fn side_of(
        me: &'static str,
        ip: &str,
        app_port: u16,
        peer: u16,
        metrics: &Metrics,
    ) -> Side {
        side_among(me, ip, app_port, peer, metrics, GROUP).await
    }

    /// [`side_of`] among the pods `group` describes.
    async fn side_among(
        me: &'static str,
        ip: &str,
        app_port: u16,
        peer: u16,
        metrics: &Metrics,
        group: Group,
    ) -> Side {
        let config = Config {
            me: me.into(),
            front: SocketAddr::new(ip.parse().expect("ip"), 0),
            peer: SocketAddr::new(ip.parse().expect("ip"), peer),
            app: (ip.into(), app_port),
            route_wait: Duration::from_secs(10),
            api_timeout: Duration::from_secs(1),
            retry_period: Duration::from_millis(100),
        };
        let proxy = Proxy::bind(config).await.expect("bind");
        let front = proxy.front.local_addr().expect("addr");
        let announced = group.announced;
        let api = crate::testing::ScriptedApi::new(move |req| {
            let (name, ip) = if req.path.ends_with("/pods/web-0") {
                ("web-0", "127.0.0.2")
            } else {
                assert!(req.path.ends_with("/pods/web-1"), "{}", req.path);
                ("web-1", "127.0.0.1")
            };
            (200, pod_of(name, ip, announced))
        });
        let listed = match group.web0_listed_at {
            Some(web0) => vec![
                watcher::Event::Init,
                watcher::Event::InitApply(pod_from(pod_of("web-0", web0, announced))),
                watcher::Event::InitApply(pod_from(pod_of("web-1", "127.0.0.1", announced))),
                watcher::Event::InitDone,
            ],
            None => Vec::new(),
        };
        let group_events = futures::StreamExt::chain(
            futures::stream::iter(listed.into_iter().map(Ok)),
            futures::stream::pending(),
        );
        let (tx, rx) = watch::channel(Status::default());
        let (holder_tx, holder_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let run = tokio::spawn(proxy.run(
            rx,
            holder_rx,
            group_events,
            Api::namespaced(api.client(), "default"),
            metrics.clone(),
            stop.clone(),
        ));
        Side {
            front,
            status: Inputs {
                status: tx,
                holder: holder_tx,
            },
            api,
            stop,
            run,
        }
    }

    fn pod_from(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a pod")
    }

    /// The Pod GETs a side's proxy sent.
    fn lookups(side: &Side) -> Vec<String> {
        side.api
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET")
            .map(|r| r.path)
            .collect()
    }

    /// web-0 (at 127.0.0.2) active and holding the Lease, web-1 (at
    /// 127.0.0.1) passive; both peer ports take the same number, free on
    /// 127.0.0.2.
    async fn web0_holding(metrics: &Metrics) -> (Side, Side) {
        let peer = free_port("127.0.0.2").await;
        let web0 = side("web-0", "127.0.0.2", peer, metrics).await;
        let web1 = side("web-1", "127.0.0.1", peer, metrics).await;
        web0.status
            .send_replace(status(Role::Active, Some("web-0")));
        web1.status
            .send_replace(status(Role::Passive, Some("web-0")));
        (web0, web1)
    }

    /// web-0 holds the Lease; web-1's proxy, among `group`, is asked
    /// through its front port and is answered by web-0. Returns the Pod
    /// GETs web-1's proxy sent, and the metrics of both.
    async fn forwarded_by_web1(group: Group) -> (Vec<String>, String) {
        let metrics = Metrics::new();
        let peer = free_port("127.0.0.2").await;
        let web0 = side("web-0", "127.0.0.2", peer, &metrics).await;
        let app_port = app("web-1", "127.0.0.1").await;
        let web1 = side_among("web-1", "127.0.0.1", app_port, peer, &metrics, group).await;
        web0.status
            .send_replace(status(Role::Active, Some("web-0")));
        web1.status
            .send_replace(status(Role::Passive, Some("web-0")));
        let mut c = connect(web1.front).await;
        assert_eq!(ask(&mut c).await.as_deref(), Some("web-0"));
        (lookups(&web1), metrics.encode())
    }

    /// The old holder's proxy forwards to the new holder in the step the
    /// Lease names it: its address comes from the group's watch, with no
    /// Pod GET on the path.
    #[tokio::test]
    async fn a_new_holder_is_forwarded_to_from_the_groups_table_without_a_lookup() {
        let (lookups, _) = forwarded_by_web1(GROUP).await;
        assert_eq!(lookups, Vec::<String>::new());
    }

    /// The old holder's candidate is busy with its calls (its passive
    /// label, its health condition) and still shows no holder: its proxy
    /// forwards to the holder the Lease's watch names meanwhile.
    #[tokio::test]
    async fn the_route_follows_the_leases_holder_before_the_status_does() {
        let (_web0, web1) = web0_holding(&Metrics::new()).await;
        web1.status.send_replace(status(Role::Passive, None));
        web1.status.holder.send_replace(Some("web-0".into()));
        let mut c = connect(web1.front).await;
        assert_eq!(ask(&mut c).await.as_deref(), Some("web-0"));
    }

    /// A holder the group's watch has not listed (not yet, or the watch
    /// fails) is looked up, as before the table.
    #[tokio::test]
    async fn a_holder_the_groups_watch_does_not_know_is_looked_up() {
        let unlisted = Group {
            web0_listed_at: None,
            ..GROUP
        };
        let (lookups, _) = forwarded_by_web1(unlisted).await;
        assert_eq!(lookups, vec!["/api/v1/namespaces/default/pods/web-0"]);
    }

    /// The group's watch missed that web-0 came back under its name with
    /// another IP: the forward to the old address is refused, web-0 is
    /// looked up, and the connection is served at its new address.
    #[tokio::test]
    async fn a_forward_refused_at_the_tables_address_looks_the_holder_up() {
        let stale = Group {
            web0_listed_at: Some("127.0.0.3"),
            ..GROUP
        };
        let (lookups, metrics) = forwarded_by_web1(stale).await;
        assert_eq!(lookups, vec!["/api/v1/namespaces/default/pods/web-0"]);
        let refused = "baton_proxy_connections_total{listener=\"front\",result=\"unreachable\"} 1";
        assert!(metrics.contains(refused), "{metrics}");
    }

    /// What ends a connection in [`answered_then_closed`].
    enum Ending {
        /// The pod is demoted.
        Switch,
        /// The sidecar exits.
        Stop,
    }

    /// A request the app already has when the route changes is answered
    /// before its connection closes; what the client sends after the switch
    /// never reaches the app.
    #[tokio::test]
    async fn a_request_in_flight_at_a_switch_is_answered_then_the_connection_closes() {
        answered_then_closed(Ending::Switch).await;
    }

    /// The same when the sidecar exits (after its drain, with a forwarded
    /// connection's client awaiting the holder's answer).
    #[tokio::test]
    async fn a_request_in_flight_when_the_sidecar_exits_is_answered_then_the_connection_closes() {
        answered_then_closed(Ending::Stop).await;
    }

    async fn answered_then_closed(ending: Ending) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (ip, metrics) = ("127.0.0.1", Metrics::new());
        // The app tells the test each line it gets, and answers it only
        // when the test says so.
        let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel();
        let answer = Arc::new(Notify::new());
        let l = TcpListener::bind((ip, 0)).await.expect("bind app");
        let app_port = l.local_addr().expect("addr").port();
        let go = answer.clone();
        tokio::spawn(async move {
            let (c, _) = l.accept().await.expect("a connection");
            let (r, mut w) = c.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = got_tx.send(line);
                go.notified().await;
                let _ = w.write_all(b"web-0\n").await;
            }
        });
        let web0 = side_of("web-0", ip, app_port, free_port(ip).await, &metrics).await;
        web0.status
            .send_replace(status(Role::Active, Some("web-0")));
        let mut c = connect(web0.front).await;
        c.get_mut().write_all(b"first\n").await.expect("sent");
        assert_eq!(got.recv().await.as_deref(), Some("first"));

        // Ended while the app works on it; the client sends more.
        match ending {
            Ending::Switch => {
                web0.status.send_replace(status(Role::Passive, None));
            }
            Ending::Stop => web0.stop.cancel(),
        }
        c.get_mut().write_all(b"second\n").await.expect("sent");
        tokio::time::sleep(ANSWER_QUIET).await;
        // An exiting proxy waits for the answer: its task ends after it.
        assert!(!web0.run.is_finished(), "the proxy ended before the answer");
        answer.notify_one();
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), c.read_line(&mut line)).await;
        assert_eq!(
            line, "web-0\n",
            "the answer to the request in flight: {read:?}"
        );
        line.clear();
        let read = tokio::time::timeout(Duration::from_secs(5), c.read_line(&mut line)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "then closed: {read:?} {line:?}"
        );
        assert!(
            got.try_recv().is_err(),
            "nothing after the end reached the app"
        );
        if let Ending::Stop = ending {
            tokio::time::timeout(Duration::from_secs(5), web0.run)
                .await
                .expect("the proxy ends once its connections have")
                .expect("the proxy's task");
        }
    }

    /// Two pods on two loopback addresses: the passive one forwards to the
    /// holder; on demotion every connection is cut, both the local and the
    /// forwarded one, and a new connection waits for the next holder.
    #[tokio::test]
    async fn demotion_cuts_every_connection_and_new_ones_wait_for_the_next_holder() {
        let metrics = Metrics::new();
        let (web0, web1) = web0_holding(&metrics).await;

        let mut direct = connect(web0.front).await;
        let mut forwarded = connect(web1.front).await;
        assert_eq!(ask(&mut direct).await.as_deref(), Some("web-0"));
        assert_eq!(ask(&mut forwarded).await.as_deref(), Some("web-0"));

        // web-0 is demoted and releases: nobody holds the Lease. web-1
        // sees the release first: it cuts what it forwarded.
        web1.status.send_replace(status(Role::Passive, None));
        assert_eq!(ask(&mut forwarded).await, None, "the forwarded one is cut");
        assert_eq!(
            ask(&mut direct).await.as_deref(),
            Some("web-0"),
            "still the holder"
        );
        web0.status.send_replace(status(Role::Passive, None));
        assert_eq!(ask(&mut direct).await, None, "the local connection is cut");

        // A new connection waits for a route, and gets web-1 once it is active.
        let waiting = tokio::spawn(async move {
            let mut c = connect(web1.front).await;
            ask(&mut c).await
        });
        web0.status
            .send_replace(status(Role::Passive, Some("web-1")));
        web1.status
            .send_replace(status(Role::Passive, Some("web-1")));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no answer before web-1 is labelled");
        web1.status
            .send_replace(status(Role::Active, Some("web-1")));
        assert_eq!(waiting.await.expect("joined").as_deref(), Some("web-1"));

        assert_counted(
            &metrics,
            &[
                "baton_proxy_cuts_total{listener=\"front\"} 2",
                "baton_proxy_connections_total{listener=\"front\",result=\"forward\"} 1",
                "baton_proxy_connections_total{listener=\"peer\",result=\"local\"} 1",
            ],
        );
    }

    #[test]
    fn only_an_http1_request_line_is_taken_for_a_next_request() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /orders?id=1 HTTP/1.0\r\nHost: web\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
        ] {
            assert_eq!(request_line(line), Some(true), "{line:?}");
        }
        for not in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], // HTTP/2's preface
            b"\x16\x03\x01\x02\x00",                  // a TLS hello
            b"who\n",                                 // a line protocol
            b"GET / HTTP/1.1\n",
            b"GET  / HTTP/1.1\r\n",
            b" GET / HTTP/1.1\r\n",
            b"GET / HTTP/1.2\r\n",
            b"GET /\x01 HTTP/1.1\r\n",
            b"{\"id\": 1}", // the rest of a body
        ] {
            assert_eq!(request_line(not), Some(false), "{not:?}");
        }
        for part in [
            &b""[..],
            b"GE",
            b"GET",
            b"GET /ind",
            b"GET /index HTTP/1",
            b"GET / HTTP/1.1\r",
        ] {
            assert_eq!(request_line(part), None, "{part:?}");
        }
        let long = [b'A'; REQUEST_LINE_MAX];
        assert_eq!(request_line(&long), Some(false), "too long to be one");
    }

    /// An HTTP/1.1 client between requests when the holder changes keeps
    /// its connection: its next request, on the same connection, is
    /// answered by the new holder, whether it came in at the old holder
    /// (then forwarded to the new one) or at the new one (then forwarded to
    /// the old one, whose peer port waits for the new holder's proxy to let
    /// go instead of cutting first), not lost to a close. A client sending
    /// anything else then is cut, as before (the demotion test).
    #[tokio::test]
    async fn an_http1_connection_between_requests_at_a_switch_takes_the_new_route() {
        let metrics = Metrics::new();
        let (web0, web1) = web0_holding(&metrics).await;
        let mut direct = connect(web0.front).await;
        let mut forwarded = connect(web1.front).await;
        assert_eq!(exchange_http1(&mut direct).await, "web-0");
        assert_eq!(exchange_http1(&mut forwarded).await, "web-0");

        // web-0 hands the Lease to web-1: it is passive first.
        web0.status
            .send_replace(status(Role::Passive, Some("web-1")));
        tokio::task::yield_now().await;
        web1.status
            .send_replace(status(Role::Active, Some("web-1")));
        for c in [&mut direct, &mut forwarded] {
            assert_eq!(
                exchange_http1(c).await,
                "web-1",
                "the same connection, the new holder"
            );
            assert_eq!(exchange_http1(c).await, "web-1");
        }

        let text = assert_counted(
            &metrics,
            &[
                "baton_proxy_connections_total{listener=\"front\",result=\"moved\"} 2",
                "baton_proxy_connections_total{listener=\"front\",result=\"forward\"} 2",
                "baton_proxy_connections_total{listener=\"front\",result=\"local\"} 2",
            ],
        );
        assert!(
            !text.contains("baton_proxy_cuts_total{listener=\"front\"}"),
            "nothing cut on the front port:\n{text}"
        );
    }

    /// A connection nothing has passed on yet when the route changes (a
    /// client's pool opens some it does not use at once) takes the new
    /// route, whatever its protocol: it is as good as a new one.
    #[tokio::test]
    async fn a_connection_nothing_passed_on_yet_takes_the_new_route_at_a_switch() {
        let metrics = Metrics::new();
        let (web0, web1) = web0_holding(&metrics).await;
        let mut direct = connect(web0.front).await;
        let mut forwarded = connect(web1.front).await;
        // Both are spliced (to web-0's app, to web-0's peer port) before
        // the switch: an open connection counts once served.
        let served = async || {
            let text = metrics.encode();
            text.contains("baton_proxy_connections_total{listener=\"front\",result=\"local\"} 1")
                && text.contains(
                    "baton_proxy_connections_total{listener=\"front\",result=\"forward\"} 1",
                )
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            while !served().await {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("both served");
        web0.status
            .send_replace(status(Role::Passive, Some("web-1")));
        web1.status
            .send_replace(status(Role::Active, Some("web-1")));
        assert_eq!(ask(&mut direct).await.as_deref(), Some("web-1"));
        assert_eq!(ask(&mut forwarded).await.as_deref(), Some("web-1"));
    }

    /// A request forwarded to the old holder after it demoted itself but
    /// before the forwarding pod has seen the switch is not cut there: the
    /// old holder's peer port sends it on to the new holder, which answers
    /// once active; the forwarding pod then moves the connection itself.
    #[tokio::test]
    async fn a_request_forwarded_to_a_holder_that_just_demoted_itself_is_sent_on_to_the_new_one() {
        let metrics = Metrics::new();
        let (web0, web1) = web0_holding(&metrics).await;
        let mut forwarded = connect(web1.front).await;
        assert_eq!(exchange_http1(&mut forwarded).await, "web-0");

        // web-0 has handed over; web-1 has not seen it yet and forwards the
        // next request to web-0 still.
        web0.status
            .send_replace(status(Role::Passive, Some("web-1")));
        let asked = tokio::spawn(async move {
            let answer = exchange_http1(&mut forwarded).await;
            (answer, forwarded)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!asked.is_finished(), "no answer before web-1 is active");
        web1.status
            .send_replace(status(Role::Active, Some("web-1")));
        let (answer, mut forwarded) = asked.await.expect("joined");
        assert_eq!(answer, "web-1", "sent on to the new holder");
        assert_eq!(exchange_http1(&mut forwarded).await, "web-1");
        let text = metrics.encode();
        assert!(
            text.contains("baton_proxy_connections_total{listener=\"peer\",result=\"moved\"} 1"),
            "web-0's peer port moved it:\n{text}"
        );
    }

    /// A forwarded connection that the holder's peer port has not served
    /// yet (it closed it, or the holder changed while it waited there) is
    /// not failed: nothing of the client's was read, so it takes the next
    /// route, here this pod's own app once it is the holder.
    #[tokio::test]
    async fn a_forwarded_connection_not_yet_served_takes_the_next_route_instead_of_failing() {
        let metrics = Metrics::new();
        // web-0's peer port: a stand-in that accepts and never serves, as
        // the peer port of a pod that is not (or no longer) the holder.
        let web0_peer = TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let peer = web0_peer.local_addr().expect("addr").port();
        let web1 = side("web-1", "127.0.0.1", peer, &metrics).await;
        web1.status
            .send_replace(status(Role::Passive, Some("web-0")));
        let front = web1.front;
        let asking = tokio::spawn(async move {
            let mut c = connect(front).await;
            ask(&mut c).await
        });
        // Forwarded to web-0, which closes it unserved: tried again.
        let (unserved, _) = web0_peer.accept().await.expect("forwarded");
        drop(unserved);
        let (waiting, _) = web0_peer.accept().await.expect("forwarded again");
        // The Lease goes to web-1 while the connection waits at web-0.
        web1.status
            .send_replace(status(Role::Active, Some("web-1")));
        assert_eq!(
            asking.await.expect("joined").as_deref(),
            Some("web-1"),
            "answered by the new holder, not failed"
        );
        drop(waiting);
        let text = assert_counted(
            &metrics,
            &[
                "baton_proxy_connections_total{listener=\"front\",result=\"rerouted\"} 2",
                "baton_proxy_connections_total{listener=\"front\",result=\"local\"} 1",
            ],
        );
        assert!(
            !text.contains("baton_proxy_cuts_total{listener=\"front\"} 1"),
            "{text}"
        );
    }

    /// The holder's app refuses (killed, or stopping as its pod is
    /// deleted): a new connection is not failed but waits for the next
    /// route, and is forwarded once the Lease has moved on.
    #[tokio::test]
    async fn a_connection_the_local_app_refuses_waits_for_the_next_holder() {
        let metrics = Metrics::new();
        let peer = free_port("127.0.0.2").await;
        let web0 = side("web-0", "127.0.0.2", peer, &metrics).await;
        let dead_app = free_port("127.0.0.1").await;
        let web1 = side_of("web-1", "127.0.0.1", dead_app, peer, &metrics).await;
        web1.status
            .send_replace(status(Role::Active, Some("web-1")));
        web0.status
            .send_replace(status(Role::Passive, Some("web-1")));
        let front = web1.front;
        let asking = tokio::spawn(async move {
            let mut c = connect(front).await;
            ask(&mut c).await
        });
        wait_metric(
            &metrics,
            "baton_proxy_connections_total{listener=\"front\",result=\"unreachable\"}",
        )
        .await;
        // web-1 hands over to web-0.
        web1.status
            .send_replace(status(Role::Passive, Some("web-0")));
        web0.status
            .send_replace(status(Role::Active, Some("web-0")));
        assert_eq!(asking.await.expect("joined").as_deref(), Some("web-0"));
    }

    /// An HTTP app answering every GET with its name, kept-alive.
    async fn http_app(name: &'static str, ip: &str) -> u16 {
        let l = TcpListener::bind((ip, 0)).await.expect("bind app");
        let port = l.local_addr().expect("addr").port();
        let router =
            axum::Router::new().route("/", axum::routing::get(move || async move { name }));
        tokio::spawn(async move { axum::serve(l, router).await });
        port
    }

    /// Waits (bounded) until the metrics say `needle`.
    async fn wait_metric(metrics: &Metrics, needle: &str) {
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while !metrics.encode().contains(needle) {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(waited.is_ok(), "no {needle} in\n{}", metrics.encode());
    }

    /// A kept-alive HTTP/1.1 client that always calls web-0's front port
    /// (as kube-proxy keeps a connection on one pod): before the switch
    /// web-0 answers; once web-0 has handed over to web-1, not one answer
    /// comes from web-0, and the client's next connection, still to
    /// web-0's port, is forwarded to web-1.
    #[tokio::test]
    async fn a_kept_alive_http_client_is_answered_by_the_new_holder_alone_after_a_handover() {
        let metrics = Metrics::new();
        let peer = free_port("127.0.0.2").await;
        let web0_app = http_app("web-0", "127.0.0.2").await;
        let web1_app = http_app("web-1", "127.0.0.1").await;
        let web0 = side_of("web-0", "127.0.0.2", web0_app, peer, &metrics).await;
        let web1 = side_of("web-1", "127.0.0.1", web1_app, peer, &metrics).await;
        web0.status
            .send_replace(status(Role::Active, Some("web-0")));
        web1.status
            .send_replace(status(Role::Passive, Some("web-0")));

        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a client");
        let url = format!("http://{}/", web0.front);
        let get = || async {
            match http.get(&url).send().await {
                Ok(r) => r.text().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        for _ in 0..5 {
            assert_eq!(get().await.as_deref(), Ok("web-0"));
        }
        wait_metric(&metrics, "baton_proxy_open_connections 1").await;

        // web-0 hands over to web-1 (a switchover): passive at once, then
        // web-1 takes the Lease and its label lands.
        web0.status
            .send_replace(status(Role::Passive, Some("web-1")));
        wait_metric(&metrics, "baton_proxy_cuts_total{listener=\"front\"} 1").await;
        web1.status
            .send_replace(status(Role::Active, Some("web-1")));

        let answers: Vec<Result<String, String>> = {
            let mut v = Vec::new();
            for _ in 0..20 {
                v.push(get().await);
            }
            v
        };
        assert!(
            answers.iter().all(|a| a.as_deref() != Ok("web-0")),
            "the demoted app answered: {answers:?}"
        );
        let failed = answers.iter().filter(|a| a.is_err()).count();
        assert!(
            failed <= 1,
            "only a request on the cut connection may fail: {answers:?}"
        );
        assert_eq!(answers.last().map(|a| a.as_deref()), Some(Ok("web-1")));
        assert!(
            metrics
                .encode()
                .contains("baton_proxy_connections_total{listener=\"front\",result=\"forward\"}"),
            "{}",
            metrics.encode()
        );
    }

    #[tokio::test]
    async fn a_connection_without_a_route_is_closed_after_the_wait() {
        let metrics = Metrics::new();
        let config = Config {
            me: "web-1".into(),
            front: "127.0.0.1:0".parse().expect("addr"),
            peer: "127.0.0.1:0".parse().expect("addr"),
            app: ("127.0.0.1".into(), 1),
            route_wait: Duration::from_millis(50),
            api_timeout: Duration::from_secs(1),
            retry_period: Duration::from_millis(100),
        };
        let proxy = Proxy::bind(config).await.expect("bind");
        let front = proxy.front.local_addr().expect("addr");
        let api = crate::testing::ScriptedApi::new(|_| (500, serde_json::json!({})));
        let (_tx, rx) = watch::channel(status(Role::Passive, None));
        let (_holder_tx, holder_rx) = watch::channel(None);
        tokio::spawn(proxy.run(
            rx,
            holder_rx,
            futures::stream::pending(),
            Api::namespaced(api.client(), "default"),
            metrics.clone(),
            CancellationToken::new(),
        ));
        let mut c = connect(front).await;
        assert_eq!(ask(&mut c).await, None, "closed once the wait is over");
        assert!(
            metrics.encode().contains(
                "baton_proxy_connections_total{listener=\"front\",result=\"no_route\"} 1"
            )
        );
        assert!(
            api.requests().iter().all(|r| r.method != "GET"),
            "no holder, no lookup: {:?}",
            api.requests()
        );
    }

    #[test]
    fn the_peer_port_tells_a_hello_from_a_clients_first_bytes() {
        assert_eq!(opening(b""), Opening::Undecided);
        assert_eq!(opening(&HELLO[..3]), Opening::Undecided);
        assert_eq!(opening(HELLO), Opening::Hello);
        // An earlier build's forwarder sends its client's bytes at once.
        assert_eq!(opening(b"GET / HTTP/1.1\r\n"), Opening::Client);
        assert_eq!(opening(b"\x16\x03\x01"), Opening::Client, "TLS");
        assert_eq!(opening(b"\0bat0n"), Opening::Client);
        assert_eq!(opening(b"\0baton/2"), Opening::Client, "another version");
    }

    #[test]
    fn only_a_holder_whose_pod_announces_the_protocol_is_asked_for_it() {
        let pod = |annotations: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web-0", "annotations": annotations},
                "status": {"podIP": "10.0.0.7"},
            }))
            .expect("a pod")
        };
        let this_build = pod(serde_json::json!({PEER_PROTOCOL_ANNOTATION: PEER_PROTOCOL}));
        assert_eq!(peer_of(&this_build), Some(peer("10.0.0.7")));
        for earlier in [
            pod(serde_json::json!({})),
            pod(serde_json::json!({PEER_PROTOCOL_ANNOTATION: "0"})),
        ] {
            assert_eq!(
                peer_of(&earlier),
                Some(Peer {
                    ip: ip("10.0.0.7"),
                    acks: false
                })
            );
        }
        let no_ip: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "web-0"}}))
            .expect("a pod");
        assert_eq!(
            peer_of(&no_ip),
            None,
            "not forwarded to before it has an IP"
        );
    }

    /// A forwarder of an earlier build sends its client's bytes at once and
    /// takes every byte back for the client: this build's holder serves it
    /// with the app's answer alone, no acknowledgement before it.
    #[tokio::test]
    async fn an_earlier_builds_forwarder_gets_the_apps_bytes_alone() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let metrics = Metrics::new();
        let peer_port = free_port("127.0.0.2").await;
        let web0 = side("web-0", "127.0.0.2", peer_port, &metrics).await;
        web0.status
            .send_replace(status(Role::Active, Some("web-0")));
        let mut old = connect(SocketAddr::new(ip("127.0.0.2"), peer_port)).await;
        old.get_mut().write_all(b"who\n").await.expect("write");
        let mut line = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), old.read_until(b'\n', &mut line))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        assert_eq!(line, b"web-0\n", "the app's bytes, nothing before them");
    }

    /// An earlier build's forwarder of a protocol whose server speaks
    /// first sends nothing: the peer port connects it to the app after
    /// [`HELLO_WAIT`], and the app's greeting comes alone.
    #[tokio::test]
    async fn an_earlier_builds_silent_forwarder_is_served_after_the_hello_wait() {
        use tokio::io::AsyncReadExt;
        let metrics = Metrics::new();
        let greeter = TcpListener::bind("127.0.0.2:0").await.expect("bind app");
        let app_port = greeter.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = greeter.accept().await {
                let _ = c.write_all(b"220 web-0\n").await;
                tokio::spawn(async move {
                    let mut sink = [0u8; 64];
                    while matches!(c.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        let peer_port = free_port("127.0.0.2").await;
        let web0 = side_of("web-0", "127.0.0.2", app_port, peer_port, &metrics).await;
        web0.status
            .send_replace(status(Role::Active, Some("web-0")));
        let mut old = TcpStream::connect(("127.0.0.2", peer_port))
            .await
            .expect("connect");
        let mut greeting = [0u8; 10];
        old.read_exact(&mut greeting).await.expect("the greeting");
        assert_eq!(&greeting, b"220 web-0\n");
    }

    /// A holder of an earlier build passes every byte to its app: this
    /// build's standby sends it no hello and waits for no acknowledgement
    /// (its pod does not announce the protocol), and the client is served.
    #[tokio::test]
    async fn a_holder_of_an_earlier_build_is_spliced_to_without_a_hello() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let metrics = Metrics::new();
        // web-0 of the earlier build: its peer port splices to its app; it
        // records the first line it got, which must be the client's.
        let web0_peer = TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let peer_port = web0_peer.local_addr().expect("addr").port();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (c, _) = web0_peer.accept().await.expect("forwarded");
            let (r, mut w) = c.into_split();
            let mut lines = BufReader::new(r).lines();
            let first = lines.next_line().await.expect("read").expect("a line");
            let _ = w.write_all(b"web-0\n").await;
            let _ = first_tx.send(first);
        });
        let app_port = app("web-1", "127.0.0.1").await;
        // The API's web-0 lacks the annotation: an earlier build.
        let earlier = Group {
            announced: false,
            ..GROUP
        };
        let web1 = side_among("web-1", "127.0.0.1", app_port, peer_port, &metrics, earlier).await;
        web1.status
            .send_replace(status(Role::Passive, Some("web-0")));
        let mut c = connect(web1.front).await;
        assert_eq!(ask(&mut c).await.as_deref(), Some("web-0"));
        assert_eq!(
            first_rx.await.expect("web-0 got a line"),
            "who",
            "the client's bytes first"
        );
    }

    #[test]
    fn the_view_of_a_status_takes_only_an_outward_active_role() {
        let status = Status {
            role: Some(Role::Passive),
            label_role: Some(Role::Active),
            holder: Some(String::new()),
            ..Status::default()
        };
        let v = View::of(&status, "web-0", None, None);
        assert!(!v.active, "labelled active but past its deadline");
    }

    /// A new holder is active as soon as its Lease write lands: its active
    /// label, which the Services of the role label wait for, may follow.
    #[test]
    fn a_new_holder_serves_locally_before_its_label_lands() {
        let status = Status {
            role: Some(Role::Active),
            label_role: Some(Role::Passive),
            holder: Some("web-0".into()),
            ..Status::default()
        };
        let v = View::of(&status, "web-0", Some("web-0".into()), None);
        assert_eq!(route(&v, Listener::Front), Route::Local);
        assert_eq!(route(&v, Listener::Peer), Route::Local);
    }
}
