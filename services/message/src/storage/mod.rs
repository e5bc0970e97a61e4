//! The message service's table: `messages`, one row per (event, recipient role). The unique key
//! on `(event_id, recipient_role)` is what makes an event that arrives twice (or is replayed)
//! unable to notify anybody twice; the inbox makes that the exception, the key makes it certain.
//!
//! `next_attempt_at_ms` drives delivery: a PENDING or FAILED row whose time has come is due,
//! unless a dispatcher's claim on it (`lease_until_ms`) still runs. Rows are never deleted by the
//! service, so nothing is ever dropped.
//!
//! No index holds the lease: a claim changes no indexed column, so on PostgreSQL it is a HOT
//! update (no index entry written) where the row's page has room, which `fillfactor` keeps.

pub mod messages;

use sea_orm_migration::{MigrationTrait, MigratorTrait};
use sharemesh_mesh::storage::{SqlMigration, with_mesh_tables};

const TABLE: &str = "CREATE TABLE messages (
        message_id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL,
        recipient_id TEXT NOT NULL,
        recipient_role TEXT NOT NULL CHECK (recipient_role IN ('CUSTOMER', 'HOST')),
        reservation_id TEXT NOT NULL DEFAULT '',
        listing_id TEXT NOT NULL DEFAULT '',
        topic TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        delivery_status TEXT NOT NULL CHECK (delivery_status IN ('PENDING', 'SENT', 'FAILED')),
        failure_reason TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at_ms BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        delivered_at_ms BIGINT,
        UNIQUE (event_id, recipient_role)
    );
    CREATE INDEX messages_by_recipient ON messages (recipient_id, created_at_ms DESC, message_id DESC);
    CREATE INDEX messages_due ON messages (delivery_status, next_attempt_at_ms)";

/// The lease moves out of `next_attempt_at_ms` into a column of its own that no index holds.
/// Before, every claim moved an indexed column and wrote an entry in each of the table's four
/// indexes (PostgreSQL's costliest statement under load, bench/README "Session 18"). A claim made
/// before the upgrade keeps its lease in `next_attempt_at_ms`, so its message is not due before
/// that lease ends, as before. While old and new replicas run side by side (a rolling upgrade),
/// an old dispatcher does not see a new one's lease and may send a message the new one is sending:
/// the receiver drops the repeat by its `Idempotency-Key`, as after a lease that lapsed.
const LEASE_APART: &str = "ALTER TABLE messages ADD COLUMN lease_until_ms BIGINT NOT NULL DEFAULT 0";
/// [`LEASE_APART`], and room in each page filled from now on for a claim's new row version next
/// to the old one.
const LEASE_APART_PG: &str = "ALTER TABLE messages ADD COLUMN lease_until_ms BIGINT NOT NULL DEFAULT 0, SET (fillfactor = 80)";

const MIGRATIONS: &[SqlMigration] = &[
    SqlMigration {
        name: "m0001_message_messages",
        sqlite: TABLE,
        postgres: TABLE,
    },
    SqlMigration {
        name: "m0002_message_lease_apart",
        sqlite: LEASE_APART,
        postgres: LEASE_APART_PG,
    },
];

/// The message service's migrations: the mesh's outbox and inbox, then its own table.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        with_mesh_tables(MIGRATIONS)
    }
}

impl sharemesh_mesh::storage::Tables for Migrator {
    fn tables(tables: &mut sharemesh_mesh::storage::writes::TableTypes) {
        tables.add::<messages::entity::Entity>();
    }
}
