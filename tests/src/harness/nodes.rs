//! The local cluster's real nodes, and faults on them for the tests and the
//! bench: a partition (the node's link down), a dead node (everything in
//! its cgroup frozen: kubelet, containerd, shims, containers), a stopped
//! kubelet alone (SIGSTOP), each undone by the same handle.
//!
//! `tests/cluster/up.sh` records its nodes in `<cluster dir>/real-nodes`,
//! one line each: `name address netns link cgroup dir`; `link` is the
//! node's end of its veth pair in the cluster's own network namespace
//! (`<cluster dir>/netns`), a port of the bridge every node shares.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// One real node as up.sh started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealNode {
    pub name: String,
    /// Its address on the nodes' bridge.
    pub ip: String,
    /// Its own network namespace.
    pub netns: String,
    /// Its link's port on the bridge, in the cluster's network namespace.
    pub link: String,
    /// Its cgroup path (the same in every v1 hierarchy).
    pub cgroup: String,
    /// Its folder: configuration, logs, containerd's socket, pid files.
    pub dir: PathBuf,
    /// The cluster's own network namespace (the control plane's).
    pub cluster_netns: String,
}

/// What can be done to a node, and undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Its link down: nothing in or out, its processes run on.
    Partition,
    /// Every process in its cgroup frozen (cgroup v1 freezer): a node that
    /// hangs whole, kubelet, containerd, shims and containers alike.
    Freeze,
    /// kubelet alone stopped (SIGSTOP): containers, containerd and
    /// kube-proxy run on; nobody reports the node's or its pods' status.
    StopKubelet,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("line {line} of {path}: {why}")]
    Record {
        path: PathBuf,
        line: usize,
        why: &'static str,
    },
    #[error("running {what}: {why}")]
    Command { what: String, why: String },
}

/// Parses up.sh's record of the nodes (pure; see the module's doc).
pub fn parse_real_nodes(
    text: &str,
    cluster_netns: &str,
    path: &Path,
) -> Result<Vec<RealNode>, NodeError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 6 {
                return Err(NodeError::Record {
                    path: path.to_owned(),
                    line: i + 1,
                    why: "not six fields: name address netns link cgroup dir",
                });
            }
            Ok(RealNode {
                name: f[0].to_owned(),
                ip: f[1].to_owned(),
                netns: f[2].to_owned(),
                link: f[3].to_owned(),
                cgroup: f[4].to_owned(),
                dir: PathBuf::from(f[5]),
                cluster_netns: cluster_netns.to_owned(),
            })
        })
        .collect()
}

/// The real nodes of the cluster in `dir` (none if it has no record).
pub fn real_nodes(dir: &Path) -> Result<Vec<RealNode>, NodeError> {
    let path = dir.join("real-nodes");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(NodeError::Read { path, source }),
    };
    let netns_path = dir.join("netns");
    let cluster_netns = std::fs::read_to_string(&netns_path).map_err(|source| NodeError::Read {
        path: netns_path,
        source,
    })?;
    parse_real_nodes(&text, cluster_netns.trim(), &path)
}

impl RealNode {
    /// Applies `fault`; [`RealNode::undo`] ends it.
    pub fn apply(&self, fault: Fault) -> Result<(), NodeError> {
        match fault {
            Fault::Partition => self.link("down"),
            Fault::Freeze => self.freezer("FROZEN"),
            Fault::StopKubelet => self.signal_kubelet("STOP"),
        }
    }

    /// Ends `fault` (harmless if it was not applied).
    pub fn undo(&self, fault: Fault) -> Result<(), NodeError> {
        match fault {
            Fault::Partition => self.link("up"),
            Fault::Freeze => self.freezer("THAWED"),
            Fault::StopKubelet => self.signal_kubelet("CONT"),
        }
    }

    /// Applies `fault` and returns a guard that undoes it when dropped (a
    /// failing test must not leave the node broken for the next one).
    pub fn inject(&self, fault: Fault) -> Result<Injected, NodeError> {
        self.apply(fault)?;
        Ok(Injected {
            node: self.clone(),
            fault,
            undone: false,
        })
    }

    /// The pid of one of the node's components (`kubelet`, `containerd`,
    /// `kube-proxy`), from the file node.sh wrote.
    pub fn pid(&self, component: &str) -> Result<u32, NodeError> {
        let path = self.dir.join(format!("{component}.pid"));
        let text = std::fs::read_to_string(&path).map_err(|source| NodeError::Read {
            path: path.clone(),
            source,
        })?;
        text.trim().parse().map_err(|_| NodeError::Record {
            path,
            line: 1,
            why: "not a pid",
        })
    }

    /// The bridge's port of the node's link up or down, in the cluster's
    /// namespace: the node's own end keeps its address and routes (it only
    /// loses its carrier), so healing needs nothing but the link back up.
    fn link(&self, state: &str) -> Result<(), NodeError> {
        run(Command::new("ip").args(["-n", &self.cluster_netns, "link", "set", &self.link, state]))
    }

    /// Writes the node's freezer state. The tests run under `ip netns exec`,
    /// whose mount namespace has no cgroup mounts; the node's own mount
    /// namespace (its launcher's, node.sh) sees the host's /sys.
    fn freezer(&self, state: &str) -> Result<(), NodeError> {
        let launcher = self.pid("launcher")?;
        let file = format!("/sys/fs/cgroup/freezer{}/freezer.state", self.cgroup);
        // Freezing takes effect once every task is frozen: wait for it.
        let script = format!(
            "echo {state} >{file} && for i in $(seq 100); do \
             [ \"$(cat {file})\" = {state} ] && exit 0; echo {state} >{file}; sleep 0.05; done; \
             echo \"still $(cat {file})\" >&2; exit 1"
        );
        run(Command::new("nsenter")
            .args(["-t", &launcher.to_string(), "-m", "--", "sh", "-c"])
            .arg(script))
    }

    fn signal_kubelet(&self, sig: &str) -> Result<(), NodeError> {
        let pid = self.pid("kubelet")?;
        run(Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string()))
    }
}

/// A fault in force on a node; dropping it undoes the fault.
#[must_use = "the fault is undone when this is dropped"]
pub struct Injected {
    node: RealNode,
    fault: Fault,
    undone: bool,
}

impl Injected {
    pub fn fault(&self) -> Fault {
        self.fault
    }

    pub fn node(&self) -> &RealNode {
        &self.node
    }

    /// Ends the fault now.
    pub fn undo(mut self) -> Result<(), NodeError> {
        self.undone = true;
        self.node.undo(self.fault)
    }
}

impl Drop for Injected {
    fn drop(&mut self) {
        if !self.undone
            && let Err(e) = self.node.undo(self.fault)
        {
            eprintln!("undoing {:?} on {}: {e}", self.fault, self.node.name);
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), NodeError> {
    let what = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| NodeError::Command {
        what: what.clone(),
        why: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NodeError::Command {
            what,
            why: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_gives_each_node_its_namespace_link_cgroup_and_folder() {
        let text = "baton-node-0 10.242.0.10 baton-n0 n0 /a/baton-node-baton-n0 /c/baton-node-0\n\
                    baton-node-1 10.242.0.11 baton-n1 n1 /a/baton-node-baton-n1 /c/baton-node-1\n";
        let nodes = parse_real_nodes(text, "baton", Path::new("real-nodes")).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].name, "baton-node-1");
        assert_eq!(nodes[1].ip, "10.242.0.11");
        assert_eq!(nodes[1].netns, "baton-n1");
        assert_eq!(nodes[1].link, "n1");
        assert_eq!(nodes[1].cgroup, "/a/baton-node-baton-n1");
        assert_eq!(nodes[1].dir, PathBuf::from("/c/baton-node-1"));
        assert_eq!(nodes[1].cluster_netns, "baton");
    }

    #[test]
    fn a_short_line_is_an_error_naming_it() {
        let err = parse_real_nodes("a b c\n", "baton", Path::new("real-nodes")).unwrap_err();
        assert!(err.to_string().contains("line 1 of real-nodes"), "{err}");
    }
}
