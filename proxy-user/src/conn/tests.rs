//! The connection value's guarantees, without sockets of a real frontend.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::*;

fn shared(metrics: &Arc<Metrics>) -> Shared {
    Shared {
        metrics: Arc::clone(metrics),
        kernel: None,
        global_limit: Arc::new(Semaphore::new(1)),
        abort: CancellationToken::new(),
        tracker: TaskTracker::new(),
        kernel_window: 1 << 20,
        kernel_sndbuf: 0,
        kernel_after: 0,
        dns: Arc::new(
            crate::dns::Dns::new(
                &["127.0.0.1:53".parse().unwrap()],
                crate::config::DnsTtl::default(),
                crate::config::DnsTtl::default(),
                Arc::clone(metrics),
            )
            .unwrap(),
        ),
        handover: Arc::default(),
    }
}

/// A connection task that panics gives back its slots and its place in the gauge: the
/// connection value's `Drop` runs while tokio unwinds the task.
#[tokio::test]
async fn a_panicking_connection_task_releases_what_it_held() {
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(shared(&metrics));
    let frontend_limit = Arc::new(Semaphore::new(1));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, peer) = listener.accept().await.unwrap();
    let task = {
        let (shared, frontend_limit) = (Arc::clone(&shared), Arc::clone(&frontend_limit));
        tokio::spawn(async move {
            let permits = (
                Arc::clone(&shared.global_limit)
                    .try_acquire_owned()
                    .unwrap(),
                frontend_limit.try_acquire_owned().unwrap(),
            );
            let frontend = Frontend {
                id: 0,
                name: "fe".into(),
                backend: "-".into(),
                tls_sides: "none",
                local_agents: true,
                metrics: super::FrontendMetrics::new(&shared.metrics, "fe"),
                idle_timeout: None,
                tcp_keepalive: crate::config::TcpKeepalive::default(),
            };
            let conn = Conn::admitted(&frontend, &shared, &accepted, peer, permits);
            let gauge = conn
                .shared
                .metrics
                .frontend_current_connections
                .with_label_values(&["fe"]);
            assert_eq!(gauge.get(), 1);
            tokio::task::yield_now().await;
            drop(accepted);
            panic!("a bug in a connection task");
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    let gauge = metrics
        .frontend_current_connections
        .with_label_values(&["fe"]);
    assert_eq!(gauge.get(), 0, "the gauge still counts the connection");
    assert_eq!(
        shared.global_limit.available_permits(),
        1,
        "global slot kept"
    );
    assert_eq!(frontend_limit.available_permits(), 1, "frontend slot kept");
    drop(client);
}

#[test]
fn tls_sides_name_each_combination() {
    assert_eq!(Frontend::tls_field(false, false), "none");
    assert_eq!(Frontend::tls_field(true, false), "client");
    assert_eq!(Frontend::tls_field(false, true), "upstream");
    assert_eq!(Frontend::tls_field(true, true), "both");
}
