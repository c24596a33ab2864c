//! `kubectl baton status`: each group's holder, health, last switch, pause.

use std::collections::BTreeMap;

use anyhow::Context;
use baton_sidecar::contract::{census::census, role_labels::LabelFlags};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod},
    jiff::Timestamp,
};
use kube::{Api, ResourceExt, api::ListParams};
use serde::Serialize;

use crate::{
    cli::{Output, StatusArgs},
    cluster::Cluster,
    group::{LeaseState, PodState},
    output,
    refusal::Refusal,
    render::{NONE, Table, age},
};

/// How many Leases are read at once.
const CONCURRENT_GETS: usize = 8;

/// What `-o json` and `-o yaml` print.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusList {
    pub groups: Vec<GroupStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupStatus {
    pub namespace: String,
    pub group: String,
    /// Whether the group's Lease exists (the sidecars create it).
    pub lease_found: bool,
    #[serde(flatten)]
    pub lease: LeaseState,
    pub pods: Vec<PodState>,
    /// The nodes of the pods not being deleted.
    pub nodes: Vec<String>,
    /// There is a standby, and every one runs on the holder's node.
    pub standbys_on_holder_node: bool,
    /// The workloads the pods belong to, as `Kind/name`.
    pub owners: Vec<String>,
    /// What the census of the pods finds, seen from the holder, one line
    /// each: the sidecars' own words (`contract::census`).
    pub group_warnings: Vec<String>,
}

impl GroupStatus {
    /// The group's status from its `pods` as listed, through the census
    /// the holder's sidecar also takes (a group without a holder has no
    /// holder's node to share).
    pub fn new(
        namespace: String,
        group: String,
        lease: Option<LeaseState>,
        pods: &[&Pod],
        keys: &LabelFlags,
    ) -> Self {
        let lease_found = lease.is_some();
        let lease = lease.unwrap_or_default();
        let c = census(
            lease.holder.as_deref().unwrap_or_default(),
            pods.iter().copied(),
        );
        let mut pods: Vec<PodState> = pods.iter().map(|p| PodState::from_pod(p, keys)).collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        GroupStatus {
            nodes: c.nodes.iter().cloned().collect(),
            standbys_on_holder_node: c.standbys_on_holder_node,
            owners: c.owner_names(),
            group_warnings: c.warnings(&group),
            namespace,
            group,
            lease_found,
            lease,
            pods,
        }
    }

    /// The census's findings in a word each, for the table.
    fn warning_tags(&self) -> String {
        let tags: Vec<&str> = [
            (self.standbys_on_holder_node, "one-node"),
            (self.owners.len() > 1, "several-owners"),
        ]
        .into_iter()
        .filter_map(|(on, tag)| on.then_some(tag))
        .collect();
        if tags.is_empty() {
            NONE.to_owned()
        } else {
            tags.join(",")
        }
    }

    /// Pods whose sidecar reports their app healthy.
    fn healthy_pods(&self) -> usize {
        self.pods.iter().filter(|p| p.healthy == Some(true)).count()
    }
}

/// The group's pods, by namespace and group, from a list of pods that
/// carry the group label.
pub fn by_group<'a>(
    pods: &'a [Pod],
    keys: &LabelFlags,
) -> BTreeMap<(String, String), Vec<&'a Pod>> {
    let mut groups: BTreeMap<(String, String), Vec<&Pod>> = BTreeMap::new();
    for pod in pods {
        let Some(group) = pod.labels().get(&keys.group_label).cloned() else {
            continue;
        };
        let namespace = pod.namespace().unwrap_or_default();
        groups.entry((namespace, group)).or_default().push(pod);
    }
    groups
}

/// One line per group.
pub fn render_groups(groups: &[GroupStatus], all_namespaces: bool, now: Timestamp) -> String {
    let header = [
        "GROUP",
        "HOLDER",
        "PODS",
        "TRANSITIONS",
        "LAST SWITCH",
        "REASON",
        "PAUSED",
        "WARNINGS",
    ];
    let mut table = with_namespace_column(header, all_namespaces);
    for g in groups {
        let mut row = Vec::new();
        if all_namespaces {
            row.push(g.namespace.clone());
        }
        row.push(g.group.clone());
        if g.lease_found {
            row.push(g.lease.holder.clone().unwrap_or_else(|| NONE.to_owned()));
        } else {
            row.push("<no lease>".to_owned());
        }
        row.push(format!("{}/{}", g.healthy_pods(), g.pods.len()));
        row.push(
            g.lease
                .transitions
                .map_or_else(|| NONE.to_owned(), |t| t.to_string()),
        );
        row.push(if g.lease_found {
            age(g.lease.acquire_time.as_ref().map(|t| t.0), now)
        } else {
            NONE.to_owned()
        });
        row.push(
            g.lease
                .switch_reason
                .clone()
                .unwrap_or_else(|| NONE.to_owned()),
        );
        row.push(g.lease.paused.to_string());
        row.push(g.warning_tags());
        table.push(row);
    }
    table.render()
}

/// One line per pod, for `-o wide`.
pub fn render_pods(groups: &[GroupStatus], all_namespaces: bool, now: Timestamp) -> String {
    let header = [
        "GROUP", "POD", "ROLE", "HEALTH", "CORDONED", "READY", "AGE", "NODE",
    ];
    let mut table = with_namespace_column(header, all_namespaces);
    for g in groups {
        for p in &g.pods {
            let mut row = Vec::new();
            if all_namespaces {
                row.push(g.namespace.clone());
            }
            row.extend([
                g.group.clone(),
                p.name.clone(),
                p.role.clone().unwrap_or_else(|| NONE.to_owned()),
                p.health().as_str().to_owned(),
                p.cordoned.to_string(),
                p.ready.to_string(),
                age(p.created.as_ref().map(|t| t.0), now),
                p.node.clone().unwrap_or_else(|| NONE.to_owned()),
            ]);
            table.push(row);
        }
    }
    table.render()
}

fn with_namespace_column<const N: usize>(header: [&str; N], all_namespaces: bool) -> Table {
    Table::new(
        all_namespaces
            .then_some("NAMESPACE")
            .into_iter()
            .chain(header),
    )
}

/// Warnings about annotations whose values mean nothing, and what the
/// census of each group finds, one per line.
pub fn warnings(groups: &[GroupStatus]) -> Vec<String> {
    let mut lines = Vec::new();
    for g in groups {
        for warning in &g.group_warnings {
            lines.push(format!(
                "Warning: group {}/{}: {warning}",
                g.namespace, g.group
            ));
        }
        for problem in &g.lease.problems {
            lines.push(format!(
                "Warning: lease {}/{}: {problem}; taken as unset",
                g.namespace, g.group
            ));
        }
        for p in &g.pods {
            for problem in &p.problems {
                lines.push(format!(
                    "Warning: pod {}/{}: {problem}; taken as unset",
                    g.namespace, p.name
                ));
            }
        }
    }
    lines
}

pub async fn run(cluster: &Cluster, args: &StatusArgs, keys: &LabelFlags) -> anyhow::Result<()> {
    let client = cluster.client.clone();
    let pods: Api<Pod> = if args.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &cluster.namespace)
    };
    let selector = match &args.group {
        Some(group) => format!("{}={group}", keys.group_label),
        None => keys.group_label.clone(),
    };
    let scope = if args.all_namespaces {
        "all namespaces".to_owned()
    } else {
        format!("namespace {:?}", cluster.namespace)
    };
    let listed = cluster
        .call(pods.list(&ListParams::default().labels(&selector)))
        .await
        .with_context(|| format!("listing the pods labelled {selector} in {scope}"))?;

    let grouped = by_group(&listed.items, keys);
    if grouped.is_empty()
        && let Some(group) = &args.group
    {
        return Err(if args.all_namespaces {
            Refusal::NoGroupAnywhere {
                group: group.clone(),
            }
        } else {
            Refusal::NoGroup {
                group: group.clone(),
                namespace: cluster.namespace.clone(),
            }
        }
        .into());
    }

    let groups: Vec<GroupStatus> = futures::stream::iter(grouped)
        .map(|((namespace, group), pods)| {
            let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
            async move {
                let lease = cluster
                    .call(leases.get_opt(&group))
                    .await
                    .with_context(|| format!("getting lease {group} in namespace {namespace:?}"))?;
                let lease = lease.as_ref().map(LeaseState::from_lease);
                anyhow::Ok(GroupStatus::new(namespace, group, lease, &pods, keys))
            }
        })
        .buffered(CONCURRENT_GETS)
        .try_collect()
        .await?;

    for line in warnings(&groups) {
        eprintln!("{line}");
    }
    let now = Timestamp::now();
    match args.output {
        Some(Output::Json) => {
            let mut json = serde_json::to_string_pretty(&StatusList { groups })?;
            json.push('\n');
            output::print(&json)
        }
        Some(Output::Yaml) => output::print(&serde_saphyr::to_string(&StatusList { groups })?),
        format => {
            if groups.is_empty() {
                if args.all_namespaces {
                    eprintln!("No baton groups found.");
                } else {
                    eprintln!("No baton groups found in {} namespace.", cluster.namespace);
                }
                return Ok(());
            }
            let mut text = render_groups(&groups, args.all_namespaces, now);
            if format == Some(Output::Wide) {
                text.push('\n');
                text.push_str(&render_pods(&groups, args.all_namespaces, now));
            }
            output::print(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::fixtures::*;
    use baton_sidecar::contract::controls::{
        APP_HEALTHY_CONDITION, CORDONED, PAUSED, SWITCH_REASON,
    };

    fn now() -> Timestamp {
        time("2025-01-01T12:00:00Z")
    }

    fn web() -> GroupStatus {
        let pods = [
            with_label(pod("web-0"), "role", "active"),
            with_conditions(
                pod("web-1"),
                vec![condition(
                    APP_HEALTHY_CONDITION,
                    "False",
                    Some("connection refused"),
                )],
            ),
            with_annotation(pod("web-2"), CORDONED, "true"),
        ];
        let lease = lease(
            Some("web-0"),
            &[(SWITCH_REASON, "web-2 was cordoned"), (PAUSED, "true")],
        );
        let groups = by_group(&pods, &keys());
        let (key, pods) = groups.into_iter().next().unwrap();
        assert_eq!(key, ("shop".to_owned(), "web".to_owned()));
        GroupStatus::new(
            key.0,
            key.1,
            Some(LeaseState::from_lease(&lease)),
            &pods,
            &keys(),
        )
    }

    #[test]
    fn the_group_table_has_one_line_per_group() {
        let api = GroupStatus::new("shop".into(), "api".into(), None, &[&pod("api-0")], &keys());
        let released = GroupStatus::new(
            "shop".into(),
            "db".into(),
            Some(LeaseState::from_lease(&lease(None, &[]))),
            &[],
            &keys(),
        );
        assert_eq!(
            render_groups(&[api, released, web()], false, now()),
            "\
GROUP   HOLDER       PODS   TRANSITIONS   LAST SWITCH   REASON               PAUSED   WARNINGS
api     <no lease>   1/1    <none>        <none>        <none>               false    <none>
db      <none>       0/0    3             3m12s         <none>               false    <none>
web     web-0        2/3    3             3m12s         web-2 was cordoned   true     one-node
"
        );
    }

    /// Pod `name` of group `web` on `node`, of `owner`'s StatefulSet.
    fn placed(name: &str, node: &str, owner: &str) -> Pod {
        let mut p = pod(name);
        p.spec.get_or_insert_default().node_name = Some(node.into());
        p.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "StatefulSet".into(),
                name: owner.into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        p
    }

    fn group_of(pods: &[Pod], holder: &str) -> GroupStatus {
        let lease = LeaseState::from_lease(&lease(Some(holder), &[]));
        let pods: Vec<&Pod> = pods.iter().collect();
        GroupStatus::new("shop".into(), "web".into(), Some(lease), &pods, &keys())
    }

    #[test]
    fn the_census_of_the_listed_pods_is_a_column_and_a_warning_each() {
        let spread = group_of(
            &[placed("web-0", "n1", "web"), placed("web-1", "n2", "web")],
            "web-0",
        );
        assert_eq!(spread.warning_tags(), NONE);
        assert!(warnings(&[spread]).is_empty());

        let fragile = group_of(
            &[placed("web-0", "n1", "web"), placed("api-0", "n1", "api")],
            "web-0",
        );
        assert_eq!(fragile.warning_tags(), "one-node,several-owners");
        assert_eq!(fragile.nodes, ["n1"]);
        assert_eq!(fragile.owners, ["StatefulSet/api", "StatefulSet/web"]);
        let lines = warnings(std::slice::from_ref(&fragile));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "Warning: group shop/web: every standby of group web (1) runs on node n1"
            ) && lines[1].contains("(StatefulSet/api, StatefulSet/web)"),
            "{lines:?}"
        );
        let json = serde_json::to_value(&fragile).unwrap();
        assert_eq!(json["standbysOnHolderNode"], true);
        assert_eq!(json["groupWarnings"].as_array().map(Vec::len), Some(2));

        // Without a holder there is no holder's node to share.
        let released = group_of(
            &[placed("web-0", "n1", "web"), placed("web-1", "n1", "web")],
            "",
        );
        assert_eq!(released.warning_tags(), NONE);
    }

    #[test]
    fn all_namespaces_adds_a_namespace_column() {
        let text = render_groups(&[web()], true, now());
        assert!(text.starts_with("NAMESPACE   GROUP   HOLDER"), "{text}");
        assert!(text.contains("\nshop        web     web-0"), "{text}");
    }

    #[test]
    fn the_wide_table_has_one_line_per_pod() {
        assert_eq!(
            render_pods(&[web()], false, now()),
            "\
GROUP   POD     ROLE      HEALTH      CORDONED   READY   AGE   NODE
web     web-0   active    healthy     false      true    12h   node-1
web     web-1   passive   unhealthy   false      false   12h   node-1
web     web-2   passive   healthy     true       true    12h   node-1
"
        );
    }

    #[test]
    fn json_has_camel_case_keys_and_nulls_for_what_is_unknown() {
        let json = serde_json::to_value(StatusList {
            groups: vec![web()],
        })
        .unwrap();
        let group = &json["groups"][0];
        assert_eq!(group["group"], "web");
        assert_eq!(group["holder"], "web-0");
        assert_eq!(group["leaseFound"], true);
        assert_eq!(group["acquireTime"], "2025-01-01T11:56:48.000000Z");
        assert_eq!(group["switchReason"], "web-2 was cordoned");
        assert_eq!(group["paused"], true);
        assert_eq!(group["switchoverTo"], serde_json::Value::Null);
        let web1 = &group["pods"][1];
        assert_eq!(web1["name"], "web-1");
        assert_eq!(web1["healthy"], false);
        assert_eq!(web1["healthMessage"], "connection refused");
        assert_eq!(web1["terminating"], false);
        assert!(web1.get("group").is_none() && web1.get("problems").is_none());
        let yaml = serde_saphyr::to_string(&StatusList {
            groups: vec![web()],
        })
        .unwrap();
        assert!(yaml.contains("switchReason: web-2 was cordoned"), "{yaml}");
    }

    #[test]
    fn pods_without_the_group_label_are_left_out_and_groups_are_per_namespace() {
        let mut other = with_label(pod("web-0"), "baton.dev/group", "web");
        other.metadata.namespace = Some("staging".into());
        let mut unlabelled = pod("x");
        unlabelled.metadata.labels = None;
        let pods = [pod("web-0"), other, unlabelled];
        let groups = by_group(&pods, &keys());
        assert_eq!(
            groups.keys().cloned().collect::<Vec<_>>(),
            vec![
                ("shop".to_owned(), "web".to_owned()),
                ("staging".to_owned(), "web".to_owned())
            ]
        );
    }

    #[test]
    fn meaningless_annotations_are_warned_about() {
        let lease = lease(Some("web-0"), &[(PAUSED, "yes")]);
        let g = GroupStatus::new(
            "shop".into(),
            "web".into(),
            Some(LeaseState::from_lease(&lease)),
            &[&with_annotation(pod("web-1"), CORDONED, "on")],
            &keys(),
        );
        assert_eq!(
            warnings(&[g]),
            vec![
                r#"Warning: lease shop/web: annotation baton.dev/paused: "yes" is not "true" or "false"; taken as unset"#,
                r#"Warning: pod shop/web-1: annotation baton.dev/cordoned: "on" is not "true" or "false"; taken as unset"#,
            ]
        );
    }
}
