import CoreML
import SwiftUI
import UIKit

/// Benchmark screen: N timed predictions (after warm-up) on one compute-unit setting, the statistics
/// `mvmoe profile latency` prints, and a benchmark JSON file (docs/apps.md) to share (`mvmoe profile ingest FILE`).
struct BenchmarkView: View {
    enum Units: String, CaseIterable, Identifiable {
        case cpu, gpu, ane, all
        var id: String { rawValue }
        var title: String { ["cpu": "CPU", "gpu": "GPU", "ane": "Neural Engine", "all": "All"][rawValue]! }
        /// MLModelConfiguration.computeUnits; GPU and ANE also allow the CPU (Core ML always may fall back to it).
        var computeUnits: MLComputeUnits {
            switch self {
            case .cpu: return .cpuOnly
            case .gpu: return .cpuAndGPU
            case .ane: return .cpuAndNeuralEngine
            case .all: return .all
            }
        }
    }

    @EnvironmentObject var store: ModelStore
    @State private var units: Units = .ane
    @State private var runs = 50
    @State private var warmup = 10
    @State private var running = false
    @State private var report: BenchmarkReport?
    @State private var fileURL: URL?
    @State private var message: String?
    /// The model benchmarked here: its own choice, so picking one never touches the live screen
    /// (whose camera is stopped while this tab is shown: ClassifyView stops it in onDisappear).
    @State private var chosen: BundledModel?

    var body: some View {
        NavigationStack {
            Form {
                Section("Model") {
                    Picker("Artifact", selection: $chosen) {
                        ForEach(store.models) { m in Text(m.meta.artifact).tag(Optional(m)) }
                    }
                    Picker("Compute units", selection: $units) {
                        ForEach(Units.allCases) { u in Text(u.title).tag(u) }
                    }
                    Stepper("Runs: \(runs)", value: $runs, in: 5...1000, step: 5)
                    Stepper("Warm-up: \(warmup)", value: $warmup, in: 0...100, step: 1)
                    Button(running ? "Running…" : "Run benchmark") { start() }
                        .disabled(running || (chosen ?? store.selected) == nil)
                }
                if let message { Text(message).foregroundStyle(.red) }
                if let r = report {
                    let s = r.stats
                    Section("Result (ms)") {
                        row("min", s.minMs)
                        row("median", s.medianMs)
                        row("p90", s.p90Ms)
                        row("mean", s.meanMs)
                        Text("\(s.runs) runs on \(r.device)").font(.footnote)
                    }
                    if let fileURL {
                        ShareLink("Share JSON", item: fileURL)
                    }
                }
            }
            .navigationTitle("Benchmark")
        }
    }

    private func row(_ name: String, _ v: Double) -> some View {
        HStack { Text(name); Spacer(); Text(String(format: "%.3f", v)).monospacedDigit() }
    }

    private func start() {
        guard let model = chosen ?? store.selected else { return }
        running = true
        message = nil
        let (units, runs, warmup) = (self.units, self.runs, self.warmup)
        DispatchQueue.global(qos: .userInitiated).async {
            let result = Result { try BenchmarkView.measure(model, units: units, runs: runs, warmup: warmup) }
            DispatchQueue.main.async {
                running = false
                switch result {
                case .success(let (r, url)):
                    report = r
                    fileURL = url
                case .failure(let error):
                    message = error.localizedDescription
                }
            }
        }
    }

    /// Loads the model with the chosen compute units, times `prediction(from:)` on a fixed input (a
    /// mid-grey image through the app preprocessing), writes the JSON atomically to the temp folder.
    nonisolated static func measure(_ model: BundledModel, units: Units, runs: Int, warmup: Int) throws -> (BenchmarkReport, URL) {
        let runner = try ModelRunner(model, computeUnits: units.computeUnits)
        let grey = RGBImage(width: 8, height: 8, rgb: [UInt8](repeating: 128, count: 8 * 8 * 3))
        let input = try runner.makeInput(Preprocess.toInput(grey, model.meta.input))
        for _ in 0..<warmup { _ = try runner.predict(input) }
        var times: [Double] = []
        for _ in 0..<runs {
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = try runner.mlModel.prediction(from: input)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
        }
        let report = BenchmarkReport(artifact: model.meta.artifact, device: DeviceInfo.description, computeUnits: units.rawValue,
                                     threads: nil, warmup: warmup, runsMs: times, created: BenchmarkReport.isoNow())
        let url = FileManager.default.temporaryDirectory.appendingPathComponent(report.fileName)
        try report.jsonData().write(to: url, options: .atomic)
        return (report, url)
    }
}

/// "iPhone16,1 (iOS 17.5)": the hardware model identifier, which names the chip generation.
enum DeviceInfo {
    static var description: String {
        var info = utsname()
        uname(&info)
        let machine = withUnsafeBytes(of: &info.machine) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return "\(machine) (iOS \(UIDevice.current.systemVersion))"
    }
}
