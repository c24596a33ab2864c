//! A table kept from a watch's events, by object name: what the group
//! watch, the proxy's table of its group's pods and the proxy's view of the
//! Lease's holder each keep. A (re)list replaces the table only once it is
//! complete, so that a relist never shows half of it and an object deleted
//! while the watch was down is seen gone. Events before the first complete
//! list are not taken for a table. No I/O.

use std::collections::BTreeMap;

use kube::{Resource, ResourceExt, runtime::watcher};

/// Objects by name, each as `V`, as the watch last listed and followed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relisted<V> {
    /// None before the first list is complete.
    table: Option<BTreeMap<String, V>>,
    /// A (re)list under way: the objects seen so far.
    listing: Option<BTreeMap<String, V>>,
}

impl<V> Default for Relisted<V> {
    fn default() -> Self {
        Self {
            table: None,
            listing: None,
        }
    }
}

impl<V: PartialEq> Relisted<V> {
    /// An event of the watch, each object kept as `keep` makes it; whether
    /// the table changed.
    pub fn handle<K: Resource>(
        &mut self,
        event: &watcher::Event<K>,
        keep: impl Fn(&K) -> V,
    ) -> bool {
        match event {
            watcher::Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(o) => {
                let listing = self.listing.get_or_insert_default();
                listing.insert(o.name_any(), keep(o));
                false
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let changed = self.table.as_ref() != Some(&listed);
                self.table = Some(listed);
                changed
            }
            watcher::Event::Apply(o) => match &mut self.table {
                Some(table) => {
                    let value = keep(o);
                    let name = o.name_any();
                    let changed = table.get(&name) != Some(&value);
                    table.insert(name, value);
                    changed
                }
                None => false,
            },
            watcher::Event::Delete(o) => match &mut self.table {
                Some(table) => table.remove(&o.name_any()).is_some(),
                None => false,
            },
        }
    }

    /// The table; None before the first list is complete.
    pub fn table(&self) -> Option<&BTreeMap<String, V>> {
        self.table.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    fn pod(name: &str, node: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"containers": [], "nodeName": node},
        }))
        .expect("a pod")
    }

    fn node(p: &Pod) -> String {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    }

    fn table(r: &Relisted<String>) -> Option<Vec<(&str, &str)>> {
        r.table()
            .map(|t| t.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
    }

    #[test]
    fn a_list_is_a_table_only_once_complete_and_events_before_it_are_not() {
        let mut r = Relisted::default();
        assert!(!r.handle(&watcher::Event::Apply(pod("web-0", "n0")), node));
        assert_eq!(table(&r), None);
        r.handle(&watcher::Event::Init, node);
        r.handle(&watcher::Event::InitApply(pod("web-0", "n0")), node);
        assert_eq!(table(&r), None, "half a list is no table");
        assert!(r.handle(&watcher::Event::InitDone, node));
        assert_eq!(table(&r), Some(vec![("web-0", "n0")]));
    }

    #[test]
    fn events_change_the_table_and_say_whether_they_did() {
        let mut r = Relisted::default();
        r.handle(&watcher::Event::Init, node);
        r.handle(&watcher::Event::InitDone, node);
        assert!(r.handle(&watcher::Event::Apply(pod("web-0", "n0")), node));
        assert!(!r.handle(&watcher::Event::Apply(pod("web-0", "n0")), node));
        assert!(r.handle(&watcher::Event::Apply(pod("web-0", "n1")), node));
        assert!(r.handle(&watcher::Event::Delete(pod("web-0", "n1")), node));
        assert!(!r.handle(&watcher::Event::Delete(pod("web-0", "n1")), node));
        assert_eq!(table(&r), Some(vec![]));
    }

    #[test]
    fn a_relist_replaces_the_table_once_complete_and_drops_what_is_gone() {
        let mut r = Relisted::default();
        r.handle(&watcher::Event::Init, node);
        r.handle(&watcher::Event::InitApply(pod("web-0", "n0")), node);
        r.handle(&watcher::Event::InitApply(pod("web-1", "n1")), node);
        r.handle(&watcher::Event::InitDone, node);
        r.handle(&watcher::Event::Init, node);
        r.handle(&watcher::Event::InitApply(pod("web-1", "n1")), node);
        assert_eq!(
            table(&r).map(|t| t.len()),
            Some(2),
            "the old table meanwhile"
        );
        assert!(r.handle(&watcher::Event::InitDone, node));
        assert_eq!(table(&r), Some(vec![("web-1", "n1")]));
        r.handle(&watcher::Event::Init, node);
        r.handle(&watcher::Event::InitApply(pod("web-1", "n1")), node);
        assert!(
            !r.handle(&watcher::Event::InitDone, node),
            "the same list again"
        );
    }
}
