//! The metered prices Tally bills with, as Stripe has them: saved by `tally stripe setup`, refreshed by
//! `price.updated`, read by the meters (`usage::summary` prices the usage with them) and by Checkout (a
//! subscription gets one item per meter).

use sqlx::{PgExecutor, PgPool};

use super::stripe::Price;
use crate::meters::Catalog;

/// Keeps `price` as the Stripe price of `event_type`'s meter.
pub async fn save(db: impl PgExecutor<'_>, event_type: &str, price: &Price) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO meter_prices (event_type, stripe_price_id, price) VALUES ($1, $2, $3)
         ON CONFLICT (event_type) DO UPDATE
             SET stripe_price_id = EXCLUDED.stripe_price_id, price = EXCLUDED.price, updated_at = now()",
        event_type,
        &price.id,
        &price.json
    )
    .execute(db)
    .await?;
    Ok(())
}

/// `price.updated`: Stripe changed one of its prices. When it is a price a meter bills with, the meter's copy takes
/// the event's fields (an older event than the copy changes nothing: webhooks arrive out of order). Fields the
/// event leaves out are kept: webhook payloads never carry `tiers`, which `find_price` expanded. Returns whether a
/// meter's price changed.
pub async fn updated(
    db: impl PgExecutor<'_>,
    price: &serde_json::Value,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<bool, sqlx::Error> {
    let Some(id) = price["id"].as_str() else { return Ok(false) };
    let changed = sqlx::query!(
        "UPDATE meter_prices SET price = price || $2, updated_at = $3
         WHERE stripe_price_id = $1 AND updated_at <= $3",
        id,
        price,
        at as _
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed > 0)
}

/// The Stripe prices a new subscription gets, in the catalog's order: one item per meter that has a price.
pub async fn subscription_items(pool: &PgPool, catalog: &Catalog) -> Result<Vec<String>, sqlx::Error> {
    let mut priced = by_event_type(pool).await?;
    Ok(catalog.meters().iter().filter_map(|meter| priced.remove(&meter.event_type)).collect())
}

/// Each priced meter's Stripe price id, by event type.
pub async fn by_event_type(pool: &PgPool) -> Result<std::collections::HashMap<String, String>, sqlx::Error> {
    let rows = sqlx::query!("SELECT event_type, stripe_price_id FROM meter_prices").fetch_all(pool).await?;
    Ok(rows.into_iter().map(|row| (row.event_type, row.stripe_price_id)).collect())
}
