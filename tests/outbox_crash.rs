//! A command committed but not yet published when the process is SIGKILLed loses no event:
//! after the restart the relay publishes it, exactly once.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use prost::Message;
use sharemesh_contracts::catalog::v1::catalog_service_client::CatalogServiceClient;
use sharemesh_contracts::catalog::v1::*;
use sharemesh_contracts::common::v1::Money;
use sharemesh_e2e::*;
use sharemesh_mesh::auth::Role;

fn car(title: &str) -> RegisterListingRequest {
    RegisterListingRequest {
        title: title.into(),
        description: String::new(),
        price: Some(Money::new(10_000, "KRW")),
        details: Some(register_listing_request::Details::Car(CarDetails {
            model: "Ray".into(),
            car_type: CarType::Compact as i32,
            seats: 4,
        })),
    }
}

#[tokio::test]
async fn sigkill_between_commit_and_publish_loses_no_event() {
    let mut nats = NatsServer::spawn();
    let mut svc = Service::start("catalog", &nats, &[]).await;
    let host = token("host-1", Role::Host);
    let mut client = CatalogServiceClient::new(svc.channel().await);
    let before = client
        .register_listing(authed(car("Before"), &host))
        .await
        .unwrap()
        .into_inner()
        .listing
        .unwrap();
    eventually(Duration::from_secs(10), "first event", || async {
        (stream_messages(&nats, "SHAREMESH_CATALOG").await.len() == 1).then_some(())
    })
    .await;

    // The broker goes away: commands still commit, their events wait in the outbox.
    nats.stop();
    let during = client
        .register_listing(authed(car("During"), &host))
        .await
        .unwrap()
        .into_inner()
        .listing
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    svc.kill().await;

    nats.start();
    svc.restart().await;
    let messages = eventually(Duration::from_secs(15), "the event committed before the crash", || async {
        let m = stream_messages(&nats, "SHAREMESH_CATALOG").await;
        (m.len() >= 2).then_some(m)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = if messages.len() == 2 {
        stream_messages(&nats, "SHAREMESH_CATALOG").await
    } else {
        messages
    };
    let ids: Vec<String> = messages
        .iter()
        .map(|m| ListingRegistered::decode(m.2.clone()).unwrap().listing.unwrap().listing_id)
        .collect();
    assert_eq!(
        ids,
        vec![before.listing_id, during.listing_id],
        "each event exactly once, in commit order"
    );
}
