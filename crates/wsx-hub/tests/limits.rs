//! What a client can make the in-process hub hold is bounded: history bytes per room and in
//! total, presence names.

use wsx_hub::{Hub, HubConfig, HubError, JoinOptions, Payload, MAX_NAME};

fn blob(n: usize, tag: u8) -> Payload {
    Payload::Binary(vec![tag; n].into())
}

async fn history_of(hub: &Hub, room: &str) -> Vec<u8> {
    let mut m = hub.member();
    let joined = m.join(room, JoinOptions { history: 100, ..Default::default() }).await.unwrap();
    joined.messages.iter().map(|m| m.payload().bytes()[0]).collect()
}

#[tokio::test]
async fn a_rooms_history_is_bounded_in_bytes() {
    let hub = Hub::local(HubConfig { history_bytes: 1000, ..HubConfig::default() });
    for tag in 1..=5 {
        hub.publish("r", blob(400, tag)).await.unwrap();
    }
    // 800 bytes fit, 1,200 do not: the two newest stay.
    assert_eq!(history_of(&hub, "r").await, [4, 5]);
    // One message larger than the bound still stays, alone.
    hub.publish("r", blob(5000, 6)).await.unwrap();
    assert_eq!(history_of(&hub, "r").await, [6]);
}

#[tokio::test]
async fn all_histories_together_are_bounded_rooms_without_members_first() {
    let hub = Hub::local(HubConfig { history_bytes: 10_000, history_total_bytes: 1500, ..HubConfig::default() });
    // A room with a member keeps its history longer than the idle ones.
    let mut member = hub.member();
    member.join("busy", JoinOptions::default()).await.unwrap();
    hub.publish("busy", blob(500, 1)).await.unwrap();
    hub.publish("idle-a", blob(500, 2)).await.unwrap();
    hub.publish("idle-b", blob(500, 3)).await.unwrap();
    // 2,000 bytes: the least recently used idle room's history goes.
    hub.publish("idle-c", blob(500, 4)).await.unwrap();
    assert_eq!(history_of(&hub, "busy").await, [1]);
    assert!(history_of(&hub, "idle-a").await.is_empty());
    assert_eq!(history_of(&hub, "idle-c").await, [4]);
    // A publisher flooding one room makes room in its own history once the idle ones are gone.
    for tag in 10..20 {
        hub.publish("flood", blob(500, tag)).await.unwrap();
    }
    let flood = history_of(&hub, "flood").await;
    assert!(!flood.is_empty() && flood.len() <= 3 && flood.last() == Some(&19), "{flood:?}");
}

#[tokio::test]
async fn presence_names_are_bounded() {
    let hub = Hub::local(HubConfig::default());
    let mut m = hub.member();
    let long = "n".repeat(MAX_NAME + 1);
    let e = m.join("r", JoinOptions { name: Some(long), ..Default::default() }).await.unwrap_err();
    assert_eq!((e.clone(), e.code()), (HubError::NameTooLong, "bad_request"));
    assert!(!m.is_in("r"));
    m.join("r", JoinOptions { name: Some("n".repeat(MAX_NAME)), ..Default::default() }).await.unwrap();
}
