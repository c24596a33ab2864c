//! The role file: what the app may read to know its role, with the Lease's
//! `leaseTransitions` as a fencing token. Replaced atomically (write a
//! temporary file beside it, then rename), so a reader never sees half.

use std::path::Path;

use serde::Serialize;

use crate::contract::Role;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleRecord<'a> {
    pub role: Role,
    pub holder: Option<&'a str>,
    pub lease_transitions: i32,
}

pub async fn write(path: &Path, record: &RoleRecord<'_>) -> std::io::Result<()> {
    let mut text = serde_json::to_string(record).map_err(std::io::Error::other)?;
    text.push('\n');
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || write_atomically(&path, text.as_bytes()))
        .await
        .map_err(std::io::Error::other)?
}

/// Writes `<path>.tmp` beside the target, then renames it over the target:
/// a reader never sees half a file. (The webhook's CA file too.)
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn role_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("baton-rolefile-{}", std::process::id()));
        tokio::fs::create_dir_all(&dir).await.expect("temp dir");
        let path = dir.join("role");
        for (role, t) in [(Role::Passive, 1), (Role::Active, 2)] {
            let rec = RoleRecord {
                role,
                holder: Some("web-0"),
                lease_transitions: t,
            };
            write(&path, &rec).await.expect("written");
        }
        let text = tokio::fs::read_to_string(&path).await.expect("read");
        assert_eq!(
            text,
            "{\"role\":\"active\",\"holder\":\"web-0\",\"lease_transitions\":2}\n"
        );
        assert!(!dir.join("role.tmp").exists());
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
}
