//! The reservation's table. One row per reservation; `(customer_id, request_id)` is unique, so a
//! repeated PlaceReservation finds the first one instead of starting a second saga.

pub mod reservations;

use sea_orm_migration::{MigrationTrait, MigratorTrait};
use sharemesh_mesh::storage::{SqlMigration, with_mesh_tables};

const TABLE: &str = "CREATE TABLE reservations (
        reservation_id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        listing_id TEXT NOT NULL,
        listing_kind TEXT NOT NULL,
        listing_title TEXT NOT NULL,
        host_id TEXT NOT NULL,
        start_ms BIGINT NOT NULL,
        end_ms BIGINT NOT NULL,
        amount_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        status TEXT NOT NULL,
        status_reason TEXT NOT NULL,
        payment_id TEXT NOT NULL,
        payment_status TEXT NOT NULL,
        card_brand TEXT NOT NULL,
        card_last4 TEXT NOT NULL,
        saga_step TEXT NOT NULL,
        last_event_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL,
        UNIQUE (customer_id, request_id)
    );
    CREATE INDEX reservations_by_customer ON reservations (customer_id, created_at_ms);
    CREATE INDEX reservations_by_host ON reservations (host_id, created_at_ms);
    CREATE INDEX reservations_pending ON reservations (status, updated_at_ms)";

const MIGRATIONS: &[SqlMigration] = &[SqlMigration {
    name: "m0001_reservations",
    sqlite: TABLE,
    postgres: TABLE,
}];

/// The reservation service's migrations: the mesh's outbox and inbox, then its own table.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        with_mesh_tables(MIGRATIONS)
    }
}
