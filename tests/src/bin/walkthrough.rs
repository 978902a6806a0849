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

    async fn stock_table(&self, products: &[Value]) -> Result<()> {
        println!(
            "   {:<16} {:>9} {:>8} {:>5} {:>8}",
            "product", "available", "reserved", "sold", "received"
        );
        for p in products {
            let id = p["id"].as_str().unwrap_or_default();
            let (_, now) = self
                .call(
                    reqwest::Method::GET,
                    format!("{}/products/{id}", self.inventory),
                    None,
                )
                .await?;
            println!(
                "   {:<16} {:>9} {:>8} {:>5} {:>8}",
                now["name"].as_str().unwrap_or("?"),
                now["available"],
                now["reserved"],
                now["sold"],
                now["totalReceived"]
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
            &id[..8],
            items.len()
        );
        Ok(id)
    }

    /// Prints the order's history as it grows until it reaches `status` (or a terminal state).
    async fn follow(&self, id: &str, status: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut printed = 0;
        loop {
            let (_, order) = self
                .call(
                    reqwest::Method::GET,
                    format!("{}/orders/{id}", self.orders),
                    None,
                )
                .await?;
            let history = order["history"].as_array().cloned().unwrap_or_default();
            for h in history.iter().skip(printed) {
                let reason = h["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                println!(
                    "   order {} → {}{reason}",
                    &id[..8],
                    h["status"].as_str().unwrap_or("?")
                );
            }
            printed = history.len();
            let now = order["status"].as_str().unwrap_or_default();
            if now == status || (now == "cancelled" && status != "cancelled") {
                return Ok(order);
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
        println!("   POST /orders/{}/{action} → {status}", &id[..8]);
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
    tour.follow(&paid, "reserved").await?;
    tour.act(&paid, "complete").await?;
    tour.follow(&paid, "processing").await?;
    tour.stock_table(&products).await?;

    let cancelled = tour
        .place("an order the customer cancels", &[(&grinder, 3)])
        .await?;
    tour.follow(&cancelled, "reserved").await?;
    tour.act(&cancelled, "cancel").await?;
    tour.follow(&cancelled, "cancelled").await?;

    let short = tour
        .place("an order for more than the stock", &[(&moka, 5)])
        .await?;
    tour.follow(&short, "cancelled").await?;

    let declined = tour
        .place("an order whose payment fails", &[(&beans, 1)])
        .await?;
    tour.follow(&declined, "reserved").await?;
    tour.act(&declined, "payment-failed").await?;
    tour.follow(&declined, "cancelled").await?;
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
