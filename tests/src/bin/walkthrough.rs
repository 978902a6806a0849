//! The quick start's guided tour: drives the running inventory and orders workers over HTTP and
//! prints every order transition and the stock as they happen.
//!
//! It seeds three products, then plays the ADR-029 flows: an order reserved and completed
//! (→ processing, stock sold), one cancelled (stock back), one refused for lack of stock, and
//! one whose payment failed. Then it prints where the APIs and metrics are and waits for Ctrl-C.
//! `WARREN_INVENTORY_URL` / `WARREN_ORDERS_URL` say where the workers listen.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use uuid::Uuid;

struct Tour {
    http: reqwest::Client,
    inventory: String,
    orders: String,
}

/// The last 8 characters of an id: the ids are time-ordered UUIDs, their first ones are alike.
fn short(id: &str) -> &str {
    id.char_indices()
        .rev()
        .nth(7)
        .map_or(id, |(start, _)| &id[start..])
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Tour {
    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.with_context(|| format!("calling {url}"))?;
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        for base in [&self.inventory, &self.orders] {
            loop {
                let ok = self
                    .http
                    .get(format!("{base}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{base}/readyz did not answer within 2 minutes");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    async fn product(&self, name: &str, stock: i64, threshold: i64) -> Result<Value> {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                format!("{}/products", self.inventory),
                Some(json!({"name": name, "initialStock": stock, "lowStockThreshold": threshold})),
            )
            .await?;
        if status != 201 {
            bail!("creating product {name}: {status} {body}");
        }
        Ok(body)
    }

    /// Prints the stock of `products` once no reservation is held any more: every step of the
    /// tour ends with its orders settled, but releases travel as events and take a moment.
    async fn stock_table(&self, products: &[Value]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let rows = loop {
            let mut rows = Vec::new();
            for p in products {
                let id = p["id"].as_str().unwrap_or_default();
                let url = format!("{}/products/{id}", self.inventory);
                rows.push(self.call(reqwest::Method::GET, url, None).await?.1);
            }
            let settled = rows.iter().all(|r| r["reserved"].as_i64() == Some(0));
            if settled || Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!(
            "   {:<16} {:>9} {:>8} {:>5} {:>8}",
            "product", "available", "reserved", "sold", "received"
        );
        for row in rows {
            let n = |k: &str| row[k].as_i64().unwrap_or(-1);
            let name = row["name"].as_str().unwrap_or("?");
            println!(
                "   {name:<16} {:>9} {:>8} {:>5} {:>8}",
                n("available"),
                n("reserved"),
                n("sold"),
                n("totalReceived")
            );
        }
        Ok(())
    }

    async fn place(&self, label: &str, items: &[(&Value, i64)]) -> Result<String> {
        let items: Vec<Value> = items
            .iter()
            .map(|(p, q)| json!({"productId": p["id"], "quantity": q}))
            .collect();
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                format!("{}/orders", self.orders),
                Some(json!({"userId": Uuid::new_v4(), "items": items})),
            )
            .await?;
        if status != 201 {
            bail!("placing order {label}: {status} {body}");
        }
        let id = body["id"].as_str().context("order id")?.to_owned();
        println!(
            "\n▶ {label}: order {} placed with {} item(s)",
            short(&id),
            items.len()
        );
        Ok(id)
    }

    /// Prints the order's history from entry `printed` on as it grows, until the order reaches
    /// `status` (or is cancelled); returns how many entries have been printed.
    async fn follow(&self, id: &str, status: &str, mut printed: usize) -> Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let url = format!("{}/orders/{id}", self.orders);
            let (_, order) = self.call(reqwest::Method::GET, url, None).await?;
            let history = order["history"].as_array().cloned().unwrap_or_default();
            for h in history.iter().skip(printed) {
                let reason = h["reason"].as_str().map(|r| format!(" ({r})"));
                let to = h["status"].as_str().unwrap_or("?");
                println!(
                    "   order {} → {to}{}",
                    short(id),
                    reason.unwrap_or_default()
                );
            }
            printed = history.len();
            let now = order["status"].as_str().unwrap_or_default();
            if now == status || (now == "cancelled" && status != "cancelled") {
                return Ok(printed);
            }
            if Instant::now() > deadline {
                bail!("order {id} did not reach {status} within a minute (it is {now})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn act(&self, id: &str, action: &str) -> Result<()> {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                format!("{}/orders/{id}/{action}", self.orders),
                Some(json!({})),
            )
            .await?;
        println!("   POST /orders/{}/{action} → {status}", short(id));
        if !(200..300).contains(&status) {
            bail!("{action} refused: {status} {body}");
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let tour = Tour {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        inventory: env_or("WARREN_INVENTORY_URL", "http://127.0.0.1:8081"),
        orders: env_or("WARREN_ORDERS_URL", "http://127.0.0.1:8082"),
    };
    println!("waiting for the workers to be ready…");
    tour.wait_ready().await?;

    println!("\n▶ seeding products");
    let beans = tour.product("espresso beans", 20, 5).await?;
    let moka = tour.product("moka pot", 3, 2).await?;
    let grinder = tour.product("grinder", 12, 10).await?;
    let products = [beans.clone(), moka.clone(), grinder.clone()];
    tour.stock_table(&products).await?;

    let paid = tour
        .place("a paid order", &[(&beans, 2), (&moka, 1)])
        .await?;
    let seen = tour.follow(&paid, "reserved", 0).await?;
    tour.act(&paid, "complete").await?;
    tour.follow(&paid, "processing", seen).await?;
    tour.stock_table(&products).await?;

    let cancelled = tour
        .place("an order the customer cancels", &[(&grinder, 3)])
        .await?;
    let seen = tour.follow(&cancelled, "reserved", 0).await?;
    tour.act(&cancelled, "cancel").await?;
    tour.follow(&cancelled, "cancelled", seen).await?;

    let too_many = tour
        .place("an order for more than the stock", &[(&moka, 5)])
        .await?;
    tour.follow(&too_many, "cancelled", 0).await?;

    let declined = tour
        .place("an order whose payment fails", &[(&beans, 1)])
        .await?;
    let seen = tour.follow(&declined, "reserved", 0).await?;
    tour.act(&declined, "payment-failed").await?;
    tour.follow(&declined, "cancelled", seen).await?;
    tour.stock_table(&products).await?;

    println!("\nThe workers keep running:");
    println!(
        "  inventory API  {}/products/{}",
        tour.inventory,
        beans["id"].as_str().unwrap_or("")
    );
    println!("  orders API     {}/orders/{paid}", tour.orders);
    println!(
        "  metrics        {}/metrics  {}/metrics",
        tour.inventory, tour.orders
    );
    println!("  RabbitMQ UI    http://127.0.0.1:15672 (guest/guest)");
    println!("Ctrl-C stops everything.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
