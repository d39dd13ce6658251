import Foundation
import Prometheus

/// The service's Prometheus metrics (`GET /metrics`, text format 0.0.4):
/// - `zeroseg_http_requests_total{route, status}`: requests answered;
/// - `zeroseg_http_request_duration_seconds{route}`: latency histogram (arrival to answer);
/// - `zeroseg_queue_length`: requests waiting for a worker; `zeroseg_workers_busy`;
///   `zeroseg_requests_in_flight`;
/// - `zeroseg_model_load_seconds`: the model's load time at start;
/// - `zeroseg_text_cache_entries`: class embeddings held in memory.
final class ServiceMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let queueLength: Gauge
    let workersBusy: Gauge
    let inFlight: Gauge
    let modelLoad: Gauge
    let textCache: Gauge
    static let buckets: [Duration] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120].map { .milliseconds(Int64($0 * 1000)) }
    /// The routes metrics are labelled with (anything else is "other": labels stay few).
    static let routes: Set<String> = ["/", "/app.js", "/app.css", "/openapi.json", "/healthz", "/metrics", "/v1/info", "/v1/segment", "/v1/embed",
                                      "/v1/search", "/v1/images/{id}"]

    init(modelLoadSeconds: Double) {
        queueLength = registry.makeGauge(descriptor: .init(namespace: "zeroseg", metricName: "queue", unitName: "length",
                                                           helpText: "Requests waiting for a worker"))
        workersBusy = registry.makeGauge(descriptor: .init(namespace: "zeroseg", metricName: "workers", unitName: "busy",
                                                           helpText: "Workers computing a request"))
        inFlight = registry.makeGauge(descriptor: .init(namespace: "zeroseg", metricName: "requests_in", unitName: "flight",
                                                        helpText: "Requests received and not yet answered"))
        modelLoad = registry.makeGauge(descriptor: .init(namespace: "zeroseg", metricName: "model_load", unitName: "seconds",
                                                         helpText: "Seconds the model took to load at start"))
        textCache = registry.makeGauge(descriptor: .init(namespace: "zeroseg", metricName: "text_cache", unitName: "entries",
                                                         helpText: "Class embeddings held in memory"))
        modelLoad.set(modelLoadSeconds)
    }

    static func route(of path: String) -> String {
        if routes.contains(path) { return path }
        if path.hasPrefix("/v1/images/") { return "/v1/images/{id}" }
        return "other"
    }

    func record(route: String, status: Int, seconds: Double) {
        registry.makeCounter(descriptor: .init(namespace: "zeroseg", subsystem: "http", metricName: "requests", unitName: "total",
                                               helpText: "HTTP requests answered, by route and status"),
                             labels: [("route", route), ("status", String(status))]).increment()
        registry.makeDurationHistogram(descriptor: .init(namespace: "zeroseg", subsystem: "http", metricName: "request_duration",
                                                         unitName: "seconds", helpText: "Seconds from a request's arrival to its answer"),
                                       labels: [("route", route)], buckets: Self.buckets)
            .record(.nanoseconds(Int64(seconds * 1e9)))
    }

    func text() -> String { registry.emitToString() }
}
