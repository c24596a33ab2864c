//! The tasks the sidecar cannot go on without (the status server, the app
//! probe): spawned here, watched while the loop runs, so that one that ends
//! early, fails or panics ends the sidecar with the cause instead of going
//! unnoticed.

use std::future::Future;

use futures::future::select_all;
use tokio::task::JoinHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A task that ended while the sidecar still needed it.
#[derive(Debug, thiserror::Error)]
#[error("the {task} stopped while the sidecar was running")]
pub struct TaskEnded {
    pub task: &'static str,
    /// Its error or panic; None if it returned as if asked to stop.
    #[source]
    pub source: Option<BoxError>,
}

/// Named tasks that should run until the sidecar stops them.
#[derive(Default)]
pub struct Tasks {
    running: Vec<(&'static str, JoinHandle<Result<(), BoxError>>)>,
}

impl Tasks {
    pub fn spawn<E: Into<BoxError>>(
        &mut self,
        task: &'static str,
        run: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        let handle = tokio::spawn(async move { run.await.map_err(Into::into) });
        self.running.push((task, handle));
    }

    /// Resolves when the first task ends, with why; never with none.
    pub async fn first_end(&mut self) -> TaskEnded {
        if self.running.is_empty() {
            return std::future::pending().await;
        }
        let handles = self.running.iter_mut().map(|(_, handle)| handle);
        let (result, index, _) = select_all(handles).await;
        let (task, _) = self.running.remove(index);
        let source = match result {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error),
            Err(join) => Some(Box::new(join) as BoxError),
        };
        TaskEnded { task, source }
    }

    /// Waits for the tasks still running, once they have been told to stop.
    pub async fn join(self) {
        for (_, handle) in self.running {
            let _ = handle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_first_task_to_end_is_named_with_its_cause() {
        let mut tasks = Tasks::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("app probe", async move {
            let _ = stopped.await;
            Ok::<(), std::io::Error>(())
        });
        tasks.spawn("status server", async {
            Err(std::io::Error::other("accept failed"))
        });
        let ended = tokio::time::timeout(Duration::from_secs(30), tasks.first_end())
            .await
            .expect("a task ended");
        assert_eq!(ended.task, "status server");
        let chain = crate::telemetry::ErrorChain(&ended).to_string();
        assert_eq!(
            chain,
            "the status server stopped while the sidecar was running: accept failed"
        );
        stop.send(()).expect("the probe waits");
        tasks.join().await;
    }

    #[tokio::test]
    async fn a_panicked_task_is_an_ended_one() {
        let mut tasks = Tasks::default();
        tasks.spawn("app probe", async {
            if true {
                panic!("probe broke");
            }
            Ok::<(), std::io::Error>(())
        });
        let ended = tasks.first_end().await;
        assert_eq!(ended.task, "app probe");
        let chain = crate::telemetry::ErrorChain(&ended).to_string();
        assert!(
            chain.contains("panicked") && chain.contains("probe broke"),
            "{chain}"
        );
    }

    #[tokio::test]
    async fn with_no_task_nothing_ends() {
        let mut tasks = Tasks::default();
        let ended = tokio::time::timeout(Duration::from_millis(10), tasks.first_end()).await;
        assert!(ended.is_err(), "pending forever");
    }
}
