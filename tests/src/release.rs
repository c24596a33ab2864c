//! What a release publishes, decided from the repository's files: the one
//! version they must all carry (the workspace's, in `Cargo.toml`), the
//! release notes (its section of `CHANGELOG.md`), the SBOM (CycloneDX, from
//! `cargo metadata` and `Cargo.lock`) and the Krew plugin manifest. Pure
//! functions over text and JSON; `baton-release` (src/bin/release.rs) reads
//! and writes the files for `make release`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

/// Where our images live; every reference to one must carry the version.
pub const IMAGE_PREFIX: &str = "ghcr.io/baton-dev/";

/// The crates whose binaries a release ships (images and plugin).
pub const SHIPPED_CRATES: [&str; 2] = ["baton-sidecar", "baton-webhook"];

/// The workspace members that must take the workspace's version.
pub const MEMBERS: [&str; 3] = ["sidecar", "webhook", "tests"];

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cargo.toml has no version in [workspace.package]")]
    NoWorkspaceVersion,
    #[error("cargo metadata: {0}")]
    Metadata(&'static str),
}

/// A place that names another version than the workspace's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub file: String,
    pub what: String,
    pub found: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} is {:?}", self.file, self.what, self.found)
    }
}

/// `key = "value"` of a TOML line, or `key: value` of a YAML line (quotes
/// dropped), when the line sets `key`.
fn value_of<'a>(line: &'a str, key: &str, sep: char) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix(key)?.trim_start();
    let value = rest.strip_prefix(sep)?.trim();
    let value = value.split(" #").next().unwrap_or(value).trim();
    Some(value.trim_matches('"').trim_matches('\''))
}

/// The `version` of `[workspace.package]` in the root `Cargo.toml`.
pub fn workspace_version(cargo_toml: &str) -> Result<String, ReleaseError> {
    let mut in_package = false;
    for line in cargo_toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package && let Some(v) = value_of(line, "version", '=') {
            return Ok(v.to_owned());
        }
    }
    Err(ReleaseError::NoWorkspaceVersion)
}

/// The `repository` of `[workspace.package]`, without a trailing slash.
pub fn workspace_repository(cargo_toml: &str) -> Option<String> {
    let mut in_package = false;
    for line in cargo_toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package && let Some(v) = value_of(line, "repository", '=') {
            return Some(v.trim_end_matches('/').to_owned());
        }
    }
    None
}

/// Every `ghcr.io/baton-dev/<name>:<tag>` in `text`, as (name, tag); a
/// reference without a tag has the tag "" (it would pull `latest`).
pub fn image_refs(text: &str) -> Vec<(String, String)> {
    let mut refs = Vec::new();
    for (at, _) in text.match_indices(IMAGE_PREFIX) {
        let rest = &text[at + IMAGE_PREFIX.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.:/".contains(c)))
            .unwrap_or(rest.len());
        let reference = &rest[..end];
        let (name, tag) = reference.split_once(':').unwrap_or((reference, ""));
        refs.push((name.to_owned(), tag.to_owned()));
    }
    refs
}

/// Places of a Helm `Chart.yaml` that differ from `version`: `version` and
/// `appVersion` (a missing one counts as a mismatch).
pub fn chart_mismatches(chart_yaml: &str, version: &str, file: &str) -> Vec<Mismatch> {
    ["version", "appVersion"]
        .into_iter()
        .filter_map(|key| {
            let found = chart_yaml
                .lines()
                .filter(|l| !l.starts_with(' '))
                .find_map(|l| value_of(l, key, ':'))
                .unwrap_or("(missing)");
            (found != version).then(|| Mismatch {
                file: file.to_owned(),
                what: key.to_owned(),
                found: found.to_owned(),
            })
        })
        .collect()
}

/// Image references of `text` whose tag is not `version`.
pub fn image_mismatches(text: &str, version: &str, file: &str) -> Vec<Mismatch> {
    image_refs(text)
        .into_iter()
        .filter(|(_, tag)| tag != version)
        .map(|(name, tag)| Mismatch {
            file: file.to_owned(),
            what: format!("the tag of {IMAGE_PREFIX}{name}"),
            found: tag,
        })
        .collect()
}

/// Places of the chart's `values.yaml` that would pin another version than
/// the chart's `appVersion`: a non-empty `tag:` or `image:` value (the
/// chart's templates fill both in from `appVersion` when they are empty).
pub fn chart_values_mismatches(values_yaml: &str, version: &str, file: &str) -> Vec<Mismatch> {
    values_yaml
        .lines()
        .filter_map(|l| {
            let key = ["tag", "image"]
                .into_iter()
                .find(|k| value_of(l, k, ':').is_some())?;
            let found = value_of(l, key, ':')?;
            (!found.is_empty() && found != version).then(|| Mismatch {
                file: file.to_owned(),
                what: format!("{key}:"),
                found: found.to_owned(),
            })
        })
        .collect()
}

/// The default of `ARG VERSION=` in a Dockerfile, when it is not `version`.
pub fn dockerfile_mismatches(dockerfile: &str, version: &str, file: &str) -> Vec<Mismatch> {
    let found = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ARG VERSION="))
        .unwrap_or("(missing)")
        .trim()
        .trim_matches('"');
    (found != version)
        .then(|| Mismatch {
            file: file.to_owned(),
            what: "ARG VERSION".to_owned(),
            found: found.to_owned(),
        })
        .into_iter()
        .collect()
}

/// A member's `Cargo.toml` that does not take the workspace's version (its
/// binaries' `--version` would then say another).
pub fn member_mismatches(member_toml: &str, file: &str) -> Vec<Mismatch> {
    let inherits = member_toml
        .lines()
        .any(|l| l.trim().replace(' ', "") == "version.workspace=true");
    (!inherits)
        .then(|| Mismatch {
            file: file.to_owned(),
            what: "the package version".to_owned(),
            found: "not version.workspace = true".to_owned(),
        })
        .into_iter()
        .collect()
}

/// The body of `## [version]` in a changelog, up to the next `## ` heading,
/// trimmed; `None` when there is no such section or it is empty.
pub fn changelog_section<'a>(changelog: &'a str, version: &str) -> Option<&'a str> {
    let heading = format!("## [{version}]");
    let start = changelog
        .match_indices(&heading)
        .find(|(at, _)| *at == 0 || changelog[..*at].ends_with('\n'))?
        .0;
    let body = &changelog[start..];
    let body = &body[body.find('\n').unwrap_or(body.len())..];
    let end = body.find("\n## ").unwrap_or(body.len());
    Some(body[..end].trim()).filter(|s| !s.is_empty())
}

fn read(root: &Path, rel: &str) -> Result<String, ReleaseError> {
    let path = root.join(rel);
    fs::read_to_string(&path).map_err(|source| ReleaseError::Read { path, source })
}

/// YAML files under `dir`, sorted, relative to `root`.
fn yaml_files(root: &Path, dir: &str) -> Result<Vec<String>, ReleaseError> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(dir)];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|source| ReleaseError::Read {
            path: d.clone(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| ReleaseError::Read {
                    path: d.clone(),
                    source,
                })?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "tpl")
                && let Ok(rel) = path.strip_prefix(root)
            {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every place of the repository at `root` that names a release version
/// other than the workspace's: the chart's `version` and `appVersion`, the
/// image tags in `manifests/`, the Dockerfile's default, the members'
/// versions (so `kubectl-baton --version` and the webhook's default sidecar
/// image, both from `CARGO_PKG_VERSION`), and a `CHANGELOG.md` section for
/// the version (the release notes).
pub fn repository_mismatches(root: &Path) -> Result<(String, Vec<Mismatch>), ReleaseError> {
    let version = workspace_version(&read(root, "Cargo.toml")?)?;
    let mut found = Vec::new();
    let chart = "manifests/helm/baton/Chart.yaml";
    found.extend(chart_mismatches(&read(root, chart)?, &version, chart));
    let values = "manifests/helm/baton/values.yaml";
    found.extend(chart_values_mismatches(
        &read(root, values)?,
        &version,
        values,
    ));
    for file in yaml_files(root, "manifests")? {
        let text = read(root, &file)?;
        // The chart names repositories and takes the tag from its
        // appVersion (checked above); a tag it does write must match.
        let chart = file.starts_with("manifests/helm/");
        found.extend(
            image_mismatches(&text, &version, &file)
                .into_iter()
                .filter(|m| !(chart && m.found.is_empty())),
        );
    }
    let dockerfile = "sidecar/Dockerfile";
    found.extend(dockerfile_mismatches(
        &read(root, dockerfile)?,
        &version,
        dockerfile,
    ));
    for member in MEMBERS {
        let file = format!("{member}/Cargo.toml");
        found.extend(member_mismatches(&read(root, &file)?, &file));
    }
    if changelog_section(&read(root, "CHANGELOG.md")?, &version).is_none() {
        found.push(Mismatch {
            file: "CHANGELOG.md".to_owned(),
            what: format!("the section ## [{version}]"),
            found: "(missing or empty)".to_owned(),
        });
    }
    Ok((version, found))
}

/// `name version checksum` of each package in a `Cargo.lock`.
pub fn lock_checksums(cargo_lock: &str) -> BTreeMap<(String, String), String> {
    let mut sums = BTreeMap::new();
    for block in cargo_lock.split("[[package]]").skip(1) {
        let field = |key| block.lines().find_map(|l| value_of(l, key, '='));
        if let (Some(name), Some(version), Some(sum)) =
            (field("name"), field("version"), field("checksum"))
        {
            sums.insert((name.to_owned(), version.to_owned()), sum.to_owned());
        }
    }
    sums
}

fn str_field<'a>(v: &'a Value, key: &'static str) -> Result<&'a str, ReleaseError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or(ReleaseError::Metadata(key))
}

/// A CycloneDX 1.5 SBOM of what the shipped crates (`roots`) link: from
/// `cargo metadata --format-version 1 --filter-platform <target>`, the
/// packages reachable through normal dependencies (not dev- or
/// build-dependencies, which are not in a binary), each with its purl,
/// licence and `Cargo.lock` checksum, and the dependency graph between
/// them. `timestamp` is passed in so that the same commit gives the same
/// file.
pub fn cyclonedx(
    metadata: &Value,
    checksums: &BTreeMap<(String, String), String>,
    roots: &[&str],
    version: &str,
    timestamp: &str,
) -> Result<Value, ReleaseError> {
    let packages = metadata
        .get("packages")
        .and_then(Value::as_array)
        .ok_or(ReleaseError::Metadata("packages"))?;
    let by_id: BTreeMap<&str, &Value> = packages
        .iter()
        .map(|p| Ok((str_field(p, "id")?, p)))
        .collect::<Result<_, ReleaseError>>()?;
    let nodes = metadata
        .pointer("/resolve/nodes")
        .and_then(Value::as_array)
        .ok_or(ReleaseError::Metadata("resolve.nodes"))?;
    // Each node's normal dependencies, by package id.
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for node in nodes {
        let id = str_field(node, "id")?;
        let deps = node.get("deps").and_then(Value::as_array);
        let normal = deps.into_iter().flatten().filter(|d| {
            d.get("dep_kinds")
                .and_then(Value::as_array)
                .is_some_and(|kinds| {
                    kinds
                        .iter()
                        .any(|k| k.get("kind").is_none_or(Value::is_null))
                })
        });
        let set = graph.entry(id).or_default();
        for dep in normal {
            set.insert(str_field(dep, "pkg")?);
        }
    }
    let mut root_ids = Vec::new();
    for root in roots {
        let id = packages
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(root))
            .ok_or(ReleaseError::Metadata("a shipped crate is not in packages"))?;
        root_ids.push(str_field(id, "id")?);
    }
    let mut reached: BTreeSet<&str> = BTreeSet::new();
    let mut stack = root_ids.clone();
    while let Some(id) = stack.pop() {
        if reached.insert(id) {
            stack.extend(graph.get(id).into_iter().flatten().copied());
        }
    }
    let mut components = Vec::new();
    for id in &reached {
        let p = by_id
            .get(id)
            .ok_or(ReleaseError::Metadata("a resolved id has no package"))?;
        let (name, ver) = (str_field(p, "name")?, str_field(p, "version")?);
        let mut c = json!({
            "type": if root_ids.contains(id) { "application" } else { "library" },
            "bom-ref": id,
            "name": name,
            "version": ver,
            "purl": format!("pkg:cargo/{name}@{ver}"),
        });
        if let Some(license) = p.get("license").and_then(Value::as_str) {
            c["licenses"] = json!([{"expression": license}]);
        }
        if let Some(sum) = checksums.get(&(name.to_owned(), ver.to_owned())) {
            c["hashes"] = json!([{"alg": "SHA-256", "content": sum}]);
        }
        components.push(c);
    }
    let dependencies: Vec<Value> = reached
        .iter()
        .map(|id| {
            let on: Vec<&str> = graph.get(id).into_iter().flatten().copied().collect();
            json!({"ref": id, "dependsOn": on})
        })
        .collect();
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": timestamp,
            "tools": {"components": [{"type": "application", "name": "baton-release", "version": version}]},
            "component": {
                "type": "application",
                "bom-ref": format!("baton@{version}"),
                "name": "baton",
                "version": version,
                "licenses": [{"expression": "Apache-2.0"}],
            },
        },
        "components": components,
        "dependencies": dependencies,
    }))
}

/// One platform's `kubectl-baton` archive in a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginArchive {
    pub os: String,
    pub arch: String,
    pub file: String,
    pub sha256: String,
}

/// The name of the plugin archive for a platform: what `make release`
/// writes and what the Krew manifest points at.
pub fn plugin_archive_name(version: &str, os: &str, arch: &str) -> String {
    format!("kubectl-baton-v{version}-{os}-{arch}.tar.gz")
}

/// The platform of a plugin archive's file name, if it is one.
pub fn plugin_archive_platform(version: &str, file: &str) -> Option<(String, String)> {
    let rest = file
        .strip_prefix(&format!("kubectl-baton-v{version}-"))?
        .strip_suffix(".tar.gz")?;
    let (os, arch) = rest.split_once('-')?;
    Some((os.to_owned(), arch.to_owned()))
}

/// Krew's plugin manifest (`baton.yaml`) for the archives of a release on
/// the GitHub releases of `repository`, one platform each.
pub fn krew_manifest(version: &str, repository: &str, archives: &[PluginArchive]) -> String {
    let mut out = format!(
        "apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: baton
spec:
  version: v{version}
  homepage: {repository}
  shortDescription: Inspect and steer baton's active/passive groups
  description: |
    baton keeps one pod of a group active behind a Service and a warm
    standby ready. This plugin shows each group (holder, healthy pods, last
    switch and why) and steers it: a planned switchover to a named pod,
    cordoning a pod, pausing automatic failover. It writes only the
    annotations that the groups' sidecars act on.
  platforms:
"
    );
    for a in archives {
        out.push_str(&format!(
            "  - selector:
      matchLabels:
        os: {os}
        arch: {arch}
    uri: {repository}/releases/download/v{version}/{file}
    sha256: {sha}
    bin: kubectl-baton
",
            os = a.os,
            arch = a.arch,
            file = a.file,
            sha = a.sha256,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::repo_root;

    #[test]
    fn every_shipped_version_is_the_workspace_version() {
        let (version, found) = repository_mismatches(&repo_root()).expect("reading the repository");
        assert!(!version.is_empty());
        assert!(
            found.is_empty(),
            "these differ from the workspace version {version} (Cargo.toml): {}",
            found
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    #[test]
    fn the_repository_check_sees_the_places_it_guards() {
        // The check above is only worth something if it reads the files
        // that carry versions: each must name the version at least once.
        let root = repo_root();
        let version =
            workspace_version(&read(&root, "Cargo.toml").expect("Cargo.toml")).expect("a version");
        let manifests = yaml_files(&root, "manifests").expect("manifests");
        let tagged: Vec<&String> = manifests
            .iter()
            .filter(|f| !image_refs(&read(&root, f).expect("a manifest")).is_empty())
            .collect();
        for must in [
            "manifests/webhook/base/deployment.yaml",
            "manifests/examples/helloworld/statefulset.yaml",
        ] {
            assert!(
                tagged.iter().any(|f| *f == must),
                "{must} has no image reference: {tagged:?}"
            );
        }
        assert!(
            image_refs(&read(&root, "manifests/webhook/base/deployment.yaml").expect("deployment"))
                .contains(&("baton-sidecar".to_owned(), version.clone())),
            "the kustomize install names the sidecar image of {version}"
        );
    }

    #[test]
    fn workspace_version_is_read_from_the_workspace_package() {
        let toml = "[package]\nversion = \"9.9.9\"\n[workspace.package]\nedition = \"2024\"\nversion = \"1.2.3\" # the one\n";
        assert_eq!(workspace_version(toml).expect("a version"), "1.2.3");
        assert!(workspace_version("[package]\nversion = \"1\"\n").is_err());
    }

    #[test]
    fn a_chart_with_another_app_version_is_a_mismatch() {
        let chart = "apiVersion: v2\nname: baton\nversion: 0.2.0\nappVersion: \"0.1.0\"\n";
        let found = chart_mismatches(chart, "0.2.0", "Chart.yaml");
        assert_eq!(
            found,
            [Mismatch {
                file: "Chart.yaml".into(),
                what: "appVersion".into(),
                found: "0.1.0".into()
            }]
        );
        assert!(chart_mismatches(chart, "0.1.0", "c").len() == 1);
        assert_eq!(
            chart_mismatches("name: baton\n", "0.1.0", "c").len(),
            2,
            "missing fields are mismatches"
        );
        // A nested `version:` (a dependency's) is not the chart's.
        let nested = "version: 1.0.0\nappVersion: 1.0.0\ndependencies:\n  - version: 2.0.0\n";
        assert!(chart_mismatches(nested, "1.0.0", "c").is_empty());
    }

    #[test]
    fn image_tags_other_than_the_version_are_mismatches() {
        let yaml = r#"
        image: ghcr.io/baton-dev/baton-webhook:0.1.0
        - {name: BATON_WEBHOOK_SIDECAR_IMAGE, value: "ghcr.io/baton-dev/baton-sidecar:0.0.9"}
        image: ghcr.io/baton-dev/baton-demo-app
        image: docker.io/library/nginx:1.27
        "#;
        assert_eq!(
            image_refs(yaml),
            [
                ("baton-webhook".to_owned(), "0.1.0".to_owned()),
                ("baton-sidecar".to_owned(), "0.0.9".to_owned()),
                ("baton-demo-app".to_owned(), String::new()),
            ]
        );
        let found = image_mismatches(yaml, "0.1.0", "d.yaml");
        assert_eq!(
            found.iter().map(|m| m.found.as_str()).collect::<Vec<_>>(),
            ["0.0.9", ""]
        );
    }

    #[test]
    fn chart_values_may_leave_tags_to_the_app_version_but_not_pin_another() {
        let values = "image:\n  repository: ghcr.io/baton-dev/baton-webhook\n  tag: \"\"\nsidecar:\n  image: \"\"\n";
        assert!(chart_values_mismatches(values, "0.1.0", "v").is_empty());
        let pinned = values.replace("tag: \"\"", "tag: \"0.0.9\"");
        assert_eq!(
            chart_values_mismatches(&pinned, "0.1.0", "v")[0].found,
            "0.0.9"
        );
        let sidecar = values.replace(
            "image: \"\"",
            "image: ghcr.io/baton-dev/baton-sidecar:0.0.9",
        );
        assert_eq!(chart_values_mismatches(&sidecar, "0.1.0", "v").len(), 1);
    }

    #[test]
    fn dockerfile_default_and_member_versions_are_checked() {
        assert!(
            dockerfile_mismatches("FROM scratch\nARG VERSION=0.1.0\n", "0.1.0", "D").is_empty()
        );
        assert_eq!(
            dockerfile_mismatches("ARG VERSION=0.0.1\n", "0.1.0", "D").len(),
            1
        );
        assert_eq!(
            dockerfile_mismatches("FROM scratch\n", "0.1.0", "D").len(),
            1
        );
        assert!(member_mismatches("[package]\nversion.workspace = true\n", "m").is_empty());
        assert_eq!(
            member_mismatches("[package]\nversion = \"0.1.0\"\n", "m").len(),
            1
        );
    }

    #[test]
    fn changelog_section_is_the_body_up_to_the_next_version() {
        let log = "# Changelog\n\nintro ## [0.2.0] in a sentence\n\n## [0.2.0]\n\n- new\n\n### Fixed\n- bug\n\n## [0.1.0]\n\n- first\n";
        assert_eq!(
            changelog_section(log, "0.2.0"),
            Some("- new\n\n### Fixed\n- bug")
        );
        assert_eq!(changelog_section(log, "0.1.0"), Some("- first"));
        assert_eq!(changelog_section(log, "0.3.0"), None);
        assert_eq!(
            changelog_section("## [1.0.0]\n\n## [0.9.0]\nx", "1.0.0"),
            None
        );
    }

    fn metadata() -> Value {
        let dep = |pkg: &str, kind: Value| json!({"pkg": pkg, "dep_kinds": [{"kind": kind, "target": null}]});
        json!({
            "packages": [
                {"id": "app 1", "name": "baton-sidecar", "version": "0.1.0", "license": "Apache-2.0"},
                {"id": "lib 1", "name": "serde", "version": "1.0.0", "license": "MIT OR Apache-2.0"},
                {"id": "deep 1", "name": "itoa", "version": "1.0.1", "license": null},
                {"id": "dev 1", "name": "proptest", "version": "1.5.0"},
                {"id": "build 1", "name": "cc", "version": "1.2.0"},
                {"id": "other 1", "name": "baton-e2e", "version": "0.1.0"}
            ],
            "resolve": {"nodes": [
                {"id": "app 1", "deps": [dep("lib 1", Value::Null), dep("dev 1", json!("dev")), dep("build 1", json!("build"))]},
                {"id": "lib 1", "deps": [dep("deep 1", Value::Null)]},
                {"id": "deep 1", "deps": []},
                {"id": "dev 1", "deps": []},
                {"id": "build 1", "deps": []},
                {"id": "other 1", "deps": [dep("app 1", Value::Null), dep("dev 1", Value::Null)]}
            ]}
        })
    }

    #[test]
    fn sbom_holds_what_the_shipped_crates_link_and_nothing_else() {
        let sums = lock_checksums(
            "version = 4\n\n[[package]]\nname = \"serde\"\nversion = \"1.0.0\"\nsource = \"registry\"\nchecksum = \"abc123\"\n\n[[package]]\nname = \"baton-sidecar\"\nversion = \"0.1.0\"\n",
        );
        assert_eq!(sums.len(), 1, "path crates have no checksum");
        let bom = cyclonedx(
            &metadata(),
            &sums,
            &["baton-sidecar"],
            "0.1.0",
            "2026-12-07T00:00:00Z",
        )
        .expect("an SBOM");
        let names: Vec<&str> = bom["components"]
            .as_array()
            .expect("components")
            .iter()
            .map(|c| c["name"].as_str().expect("a name"))
            .collect();
        assert_eq!(
            names,
            ["baton-sidecar", "itoa", "serde"],
            "dev, build and unreachable crates are left out"
        );
        let serde = &bom["components"][2];
        assert_eq!(serde["purl"], "pkg:cargo/serde@1.0.0");
        assert_eq!(serde["licenses"][0]["expression"], "MIT OR Apache-2.0");
        assert_eq!(serde["hashes"][0]["content"], "abc123");
        assert_eq!(bom["components"][0]["type"], "application");
        assert!(bom["components"][1].get("licenses").is_none());
        assert_eq!(
            bom["dependencies"][0],
            json!({"ref": "app 1", "dependsOn": ["lib 1"]})
        );
        assert_eq!(bom["metadata"]["component"]["version"], "0.1.0");
        assert!(cyclonedx(&metadata(), &sums, &["nope"], "0.1.0", "t").is_err());
    }

    #[test]
    fn krew_manifest_names_each_archive_with_its_checksum() {
        assert_eq!(
            plugin_archive_name("0.1.0", "linux", "arm64"),
            "kubectl-baton-v0.1.0-linux-arm64.tar.gz"
        );
        assert_eq!(
            plugin_archive_platform("0.1.0", "kubectl-baton-v0.1.0-linux-arm64.tar.gz"),
            Some(("linux".to_owned(), "arm64".to_owned()))
        );
        assert_eq!(
            plugin_archive_platform("0.1.0", "kubectl-baton-v0.0.9-linux-arm64.tar.gz"),
            None
        );
        assert_eq!(
            plugin_archive_platform("0.1.0", "kubectl-baton-v0.1.0-linux-arm64.tar.gz.sha256"),
            None
        );
        let archives: Vec<PluginArchive> = [("amd64", "aa"), ("arm64", "bb")]
            .into_iter()
            .map(|(arch, sha)| PluginArchive {
                os: "linux".into(),
                arch: arch.into(),
                file: plugin_archive_name("0.1.0", "linux", arch),
                sha256: sha.into(),
            })
            .collect();
        let yaml = krew_manifest("0.1.0", "https://github.com/baton-dev/baton", &archives);
        assert!(yaml.contains("  version: v0.1.0\n"));
        assert!(yaml.contains(
            "    uri: https://github.com/baton-dev/baton/releases/download/v0.1.0/kubectl-baton-v0.1.0-linux-arm64.tar.gz\n    sha256: bb\n"
        ));
        assert_eq!(yaml.matches("bin: kubectl-baton").count(), 2);
    }
}
