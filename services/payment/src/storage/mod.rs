//! The payment service's table: `payments`, one row per reservation (`reservation_id` is
//! unique, which is what makes a retried approval unable to charge twice).
//!
//! A row keeps the card's brand and last four digits only; no column can hold a card number.

pub mod payments;

use sea_orm_migration::{MigrationTrait, MigratorTrait};
use sharemesh_mesh::storage::{SqlMigration, with_mesh_tables};

/// The same SQL on both backends.
const PAYMENTS: &str = "CREATE TABLE payments (
        payment_id TEXT PRIMARY KEY,
        reservation_id TEXT NOT NULL UNIQUE,
        customer_id TEXT NOT NULL,
        amount_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('APPROVED', 'DECLINED', 'CANCELLED')),
        decline_reason TEXT NOT NULL DEFAULT '',
        card_brand TEXT NOT NULL,
        card_last4 TEXT NOT NULL,
        version BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL
    );
    CREATE INDEX payments_by_customer ON payments (customer_id, created_at_ms DESC);
    CREATE INDEX payments_by_created ON payments (created_at_ms DESC, payment_id DESC)";

const MIGRATIONS: &[SqlMigration] = &[SqlMigration {
    name: "m0001_payment_payments",
    sqlite: PAYMENTS,
    postgres: PAYMENTS,
}];

/// The payment service's migrations: the mesh's outbox and inbox, then its own table.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        with_mesh_tables(MIGRATIONS)
    }
}

impl sharemesh_mesh::storage::Tables for Migrator {
    fn tables(tables: &mut sharemesh_mesh::storage::writes::TableTypes) {
        tables.add::<payments::entity::Entity>();
    }
}
