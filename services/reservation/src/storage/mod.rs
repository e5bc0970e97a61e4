//! The reservation's table. One row per reservation; `(customer_id, request_id, attempt)` is
//! unique, so a repeated PlaceReservation finds the latest attempt instead of starting a second
//! saga — unless that attempt was rejected because an upstream was down (`retryable`), in which
//! case exactly one replica inserts the next attempt.

pub mod reservations;

use sea_orm_migration::{MigrationTrait, MigratorTrait};
use sharemesh_mesh::storage::{SqlMigration, with_mesh_tables};

/// The columns of the first version of `reservations` (m0001, and the SQLite rebuild of m0002).
macro_rules! columns_v1 {
    () => {
        "reservation_id TEXT PRIMARY KEY,
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
        updated_at_ms BIGINT NOT NULL"
    };
}

/// The indexes of `reservations` (a rebuilt SQLite table needs them again).
macro_rules! indexes {
    () => {
        "CREATE INDEX reservations_by_customer ON reservations (customer_id, created_at_ms);
    CREATE INDEX reservations_by_host ON reservations (host_id, created_at_ms);
    CREATE INDEX reservations_pending ON reservations (status, updated_at_ms)"
    };
}

const TABLE: &str = concat!(
    "CREATE TABLE reservations (",
    columns_v1!(),
    ",
        UNIQUE (customer_id, request_id)
    );
    ",
    indexes!()
);

/// Attempts: a request rejected by an outage may run again under the same request id. SQLite
/// cannot drop a table constraint, so the table is rebuilt.
const ATTEMPTS_SQLITE: &str = concat!(
    "CREATE TABLE reservations_attempts (",
    columns_v1!(),
    ",
        attempt INTEGER NOT NULL DEFAULT 1,
        retryable BOOLEAN NOT NULL DEFAULT FALSE,
        UNIQUE (customer_id, request_id, attempt)
    );
    INSERT INTO reservations_attempts SELECT *, 1, FALSE FROM reservations;
    DROP TABLE reservations;
    ALTER TABLE reservations_attempts RENAME TO reservations;
    ",
    indexes!()
);

const ATTEMPTS_POSTGRES: &str = "ALTER TABLE reservations ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE reservations ADD COLUMN retryable BOOLEAN NOT NULL DEFAULT FALSE;
    ALTER TABLE reservations DROP CONSTRAINT reservations_customer_id_request_id_key;
    ALTER TABLE reservations ADD CONSTRAINT reservations_request_attempt UNIQUE (customer_id, request_id, attempt)";

const MIGRATIONS: &[SqlMigration] = &[
    SqlMigration {
        name: "m0001_reservations",
        sqlite: TABLE,
        postgres: TABLE,
    },
    SqlMigration {
        name: "m0002_reservation_attempts",
        sqlite: ATTEMPTS_SQLITE,
        postgres: ATTEMPTS_POSTGRES,
    },
];

/// The reservation service's migrations: the mesh's outbox and inbox, then its own table.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        with_mesh_tables(MIGRATIONS)
    }
}

impl sharemesh_mesh::storage::Tables for Migrator {
    fn tables(tables: &mut sharemesh_mesh::storage::writes::TableTypes) {
        tables.add::<reservations::entity::Entity>();
    }
}
