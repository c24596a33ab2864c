//! Who holds the Lease, for the proxy, as the Lease watch says it the
//! moment its event arrives (`docs/decisions.md` §24). The candidate takes
//! the same events only between its API calls: an old holder whose app
//! died releases, labels itself passive and writes its health condition
//! before it reads the next event, and its proxy would learn the new
//! holder that much later. Which pod is active stays the candidate's word
//! (its outward role); only where a passive pod forwards comes from here,
//! and a forward to a pod that is not active is not served there but
//! rerouted, so a name that runs ahead of the candidate is safe.
//!
//! [`HolderWatch`] is pure; [`tee`] is the thin driver that reads the
//! watch, says the holder, and hands every event on to the candidate.

use futures::{Stream, StreamExt, stream::BoxStream};
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::Instrument;

use crate::election::lease_holder;

/// The Lease's holder through the watch's events, a relist included. The
/// watch selects one Lease by name, so each applied event says its holder
/// (not a table of objects as [`crate::relisted::Relisted`] keeps).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HolderWatch {
    /// A (re)list under way: the holder it found so far (None: no Lease
    /// listed yet, or one without a holder).
    listing: Option<Option<String>>,
}

impl HolderWatch {
    /// What `event` says of the holder now: `Some(holder)` when it says
    /// (None: nobody holds it, or there is no Lease), None when it says
    /// nothing yet. A relist says it once complete, so a Lease deleted
    /// while the watch was down is seen gone.
    pub fn handle(&mut self, event: &watcher::Event<Lease>) -> Option<Option<String>> {
        match event {
            watcher::Event::Init => {
                self.listing = Some(None);
                None
            }
            watcher::Event::InitApply(lease) => {
                self.listing = Some(lease_holder(lease));
                None
            }
            watcher::Event::InitDone => Some(self.listing.take().flatten()),
            watcher::Event::Apply(lease) => Some(lease_holder(lease)),
            watcher::Event::Delete(_) => Some(None),
        }
    }
}

/// Reads the Lease watch in a task of its own: says each holder on
/// `holder` as its event arrives, and hands every event on, in order, to
/// the stream returned (the candidate's). The task ends once that stream
/// is dropped.
pub fn tee<S>(events: S, holder: watch::Sender<Option<String>>) -> BoxStream<'static, S::Item>
where
    S: Stream<Item = Result<watcher::Event<Lease>, watcher::Error>> + Send + 'static,
{
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(
        async move {
            let mut events = std::pin::pin!(events);
            let mut watch = HolderWatch::default();
            while let Some(event) = events.next().await {
                if let Ok(e) = &event
                    && let Some(now) = watch.handle(e)
                {
                    holder.send_if_modified(|h| {
                        let changed = *h != now;
                        *h = now;
                        changed
                    });
                }
                if tx.unbounded_send(event).is_err() {
                    return;
                }
            }
        }
        .in_current_span(),
    );
    rx.boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"holderIdentity": holder},
        }))
        .expect("a lease")
    }

    #[test]
    fn each_change_of_the_lease_says_its_holder_and_a_release_says_none() {
        let mut w = HolderWatch::default();
        assert_eq!(
            w.handle(&watcher::Event::Apply(lease("web-0"))),
            Some(Some("web-0".into()))
        );
        assert_eq!(w.handle(&watcher::Event::Apply(lease(""))), Some(None));
        assert_eq!(
            w.handle(&watcher::Event::Delete(lease("web-1"))),
            Some(None),
            "a deleted Lease has no holder"
        );
    }

    #[test]
    fn a_relist_says_the_holder_once_complete() {
        let mut w = HolderWatch::default();
        assert_eq!(w.handle(&watcher::Event::Init), None);
        assert_eq!(w.handle(&watcher::Event::InitApply(lease("web-1"))), None);
        assert_eq!(
            w.handle(&watcher::Event::InitDone),
            Some(Some("web-1".into()))
        );
        // The Lease was deleted while the watch was down: the relist finds
        // none.
        w.handle(&watcher::Event::Init);
        assert_eq!(w.handle(&watcher::Event::InitDone), Some(None));
    }

    /// The holder is said as the event arrives, before the candidate has
    /// taken it, and the candidate gets every event in order.
    #[tokio::test]
    async fn the_tee_says_the_holder_before_the_candidate_reads_and_passes_every_event_on() {
        let (events_tx, events_rx) = futures::channel::mpsc::unbounded();
        let (holder_tx, mut holder_rx) = watch::channel(None);
        let mut candidate = tee(events_rx, holder_tx);
        for holder in ["web-0", "", "web-1"] {
            events_tx
                .unbounded_send(Ok(watcher::Event::Apply(lease(holder))))
                .expect("sent");
        }
        let said = holder_rx.wait_for(|h| h.as_deref() == Some("web-1"));
        tokio::time::timeout(std::time::Duration::from_secs(5), said)
            .await
            .expect("said within 5 s, the candidate reading nothing")
            .expect("the tee runs");
        let mut read = Vec::new();
        for _ in 0..3 {
            match candidate.next().await {
                Some(Ok(watcher::Event::Apply(l))) => {
                    read.push(l.spec.and_then(|s| s.holder_identity).unwrap_or_default())
                }
                other => panic!("an applied Lease: {other:?}"),
            }
        }
        assert_eq!(read, ["web-0", "", "web-1"]);
    }
}
