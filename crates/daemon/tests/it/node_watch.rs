//! The one Node watcher ([`gpu_slicer_daemon::cluster::node::step`] and
//! [`NodeWatcher`]) against the stub API server: every transition of its
//! state machine, and the view it publishes (labels, the changes seen, the
//! gaps in watching).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::TIMEOUT;
use crate::kube_stub::KubeStub;
use gpu_slicer_daemon::cluster::api::KubeClient;
use gpu_slicer_daemon::cluster::node::{
    NodeView, NodeWatcher, WatcherEvent, WatcherState, step, synced,
};

const STATE: &str = "nvidia.com/mig.config.state";
const CONFIG: &str = "nvidia.com/mig.config";

fn labels_of(event: &Option<WatcherEvent>) -> BTreeMap<String, String> {
    match event {
        Some(WatcherEvent::Listed { node, .. } | WatcherEvent::Applied(node)) => {
            node.metadata.labels.clone()
        }
        other => panic!("expected the node, got {other:?}"),
    }
}

async fn step_in_time(
    client: &KubeClient,
    state: WatcherState,
) -> (Option<WatcherEvent>, WatcherState) {
    tokio::time::timeout(TIMEOUT, step(client, "n1", state))
        .await
        .expect("a step within the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_reads_or_watches_and_errors_go_back_to_a_fresh_read() {
    let stub = KubeStub::start("n1", &[(STATE, "success")], json!([])).await;
    let client = KubeClient::with_url(&stub.url).expect("client");

    // Empty: a get. The first read is not a relist.
    let (event, state) = step_in_time(&client, WatcherState::Empty { gap: false }).await;
    assert!(
        matches!(event, Some(WatcherEvent::Listed { relist: false, .. })),
        "{event:?}"
    );
    assert_eq!(labels_of(&event)[STATE], "success");
    assert!(matches!(&state, WatcherState::Listed { version } if version == "1"));

    // Listed: a watch opens, nothing to report yet.
    let (event, state) = step_in_time(&client, state).await;
    assert!(event.is_none(), "{event:?}");
    assert!(matches!(state, WatcherState::Watching { .. }));

    // Watching: each change, one event, in order; none lost when two
    // arrive together.
    stub.set_labels_at_once(&[(STATE, Some("pending")), (STATE, Some("success"))]);
    let (event, state) = step_in_time(&client, state).await;
    assert_eq!(labels_of(&event)[STATE], "pending");
    let (event, state) = step_in_time(&client, state).await;
    assert_eq!(labels_of(&event)[STATE], "success");
    assert!(matches!(&state, WatcherState::Watching { version, .. } if version == "3"));

    // The server ends the watch: watched again from the last version.
    stub.end_watches();
    let (event, state) = step_in_time(&client, state).await;
    assert!(
        matches!(event, Some(WatcherEvent::WatchEnded { .. })),
        "{event:?}"
    );
    assert!(matches!(&state, WatcherState::Listed { version } if version == "3"));
    let (_, state) = step_in_time(&client, state).await;

    // A change the watch cannot report (410 Gone): back to a fresh read,
    // which is a relist and shows it.
    stub.set_label_unseen(CONFIG, Some("all-1g.5gb"));
    let (event, state) = step_in_time(&client, state).await;
    assert!(
        matches!(event, Some(WatcherEvent::WatchEnded { .. })),
        "{event:?}"
    );
    let (event, state) = step_in_time(&client, state).await;
    assert!(event.is_none(), "{event:?}");
    let (event, state) = step_in_time(&client, state).await;
    match &event {
        Some(WatcherEvent::Error(e)) => assert!(e.contains("(410)"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(state, WatcherState::Empty { gap: true }));
    let (event, state) = step_in_time(&client, state).await;
    assert!(
        matches!(event, Some(WatcherEvent::Listed { relist: true, .. })),
        "{event:?}"
    );
    assert_eq!(labels_of(&event)[CONFIG], "all-1g.5gb");

    // The API server fails: the watch request and the read report it, and
    // the watcher stays at a fresh read (a gap) until one succeeds.
    stub.fail_requests(true);
    let (event, state) = step_in_time(&client, state).await;
    match &event {
        Some(WatcherEvent::Error(e)) => assert!(
            e.contains("cannot watch node n1") && e.contains("500"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    let (event, state) = step_in_time(&client, state).await;
    match &event {
        Some(WatcherEvent::Error(e)) => assert!(e.contains("cannot get node n1"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(state, WatcherState::Empty { gap: true }));
    stub.fail_requests(false);
    let (event, _) = step_in_time(&client, state).await;
    assert!(
        matches!(event, Some(WatcherEvent::Listed { relist: true, .. })),
        "{event:?}"
    );
}

#[test]
fn the_view_counts_every_change_and_every_gap() {
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut view = NodeView::default();
    assert!(!view.synced);
    // The first read counts no change.
    assert_eq!(view.observe(&labels(&[(STATE, "success")]), false).len(), 1);
    assert!(view.synced);
    assert_eq!(view.revision(&[STATE, CONFIG]), 0);
    // Back to the same value still counts twice.
    view.observe(&labels(&[(STATE, "pending")]), false);
    let changed = view.observe(&labels(&[(STATE, "success")]), false);
    assert_eq!(changed, [(STATE.to_string(), Some("pending".to_string()))]);
    assert_eq!(view.revision(&[STATE]), 2);
    // An unrelated label is not counted for these keys.
    view.observe(&labels(&[(STATE, "success"), ("other", "x")]), false);
    assert_eq!(view.revision(&[STATE, CONFIG]), 2);
    // A removal counts; a relist counts even when nothing differs.
    view.observe(&labels(&[("other", "x")]), false);
    assert_eq!(view.label(STATE), None);
    assert_eq!(view.revision(&[STATE]), 3);
    view.observe(&labels(&[("other", "x")]), true);
    assert_eq!(view.relists, 1);
    assert_eq!(view.revision(&[STATE]), 4);
}

/// Two steps that arrive together are published as one value (a watch
/// channel keeps the latest), but the view's revision counts both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_publishes_levels_and_a_revision_no_coalescing_loses() {
    let stub = KubeStub::start("n1", &[(STATE, "success")], json!([])).await;
    let client = Arc::new(KubeClient::with_url(&stub.url).expect("client"));
    let shutdown = CancellationToken::new();
    let mut view = NodeWatcher {
        client,
        node: "n1".into(),
        logged: vec![STATE.into()],
    }
    .spawn(shutdown.clone());
    assert!(
        tokio::time::timeout(TIMEOUT, synced(&mut view))
            .await
            .expect("synced")
    );
    assert_eq!(view.borrow().label(STATE), Some("success"));
    let before = view.borrow_and_update().revision(&[STATE, CONFIG]);

    stub.set_labels_at_once(&[(STATE, Some("pending")), (STATE, Some("success"))]);
    tokio::time::timeout(
        TIMEOUT,
        view.wait_for(|v| v.revision(&[STATE, CONFIG]) == before + 2),
    )
    .await
    .expect("both changes counted")
    .expect("watcher alive");
    assert_eq!(view.borrow().label(STATE), Some("success"));

    // Shutdown ends the watcher: its receivers see it gone.
    shutdown.cancel();
    tokio::time::timeout(TIMEOUT, async { while view.changed().await.is_ok() {} })
        .await
        .expect("the watcher stops");
}
