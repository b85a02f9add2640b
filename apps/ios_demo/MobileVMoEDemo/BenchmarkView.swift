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
                    Section("Apart from the prediction (median ms)") {
                        if !r.preprocessMs.isEmpty { row("preprocess", BenchStats(r.preprocessMs).medianMs) }
                        if !r.postprocessMs.isEmpty { row("postprocess", BenchStats(r.postprocessMs).medianMs) }
                        if let l = r.loadMs { row("load", l) }
                        if let f = r.firstRunMs { row("first prediction", f) }
                        if !r.tailSwitchMs.isEmpty { row("cold expert-tail switch", BenchStats(r.tailSwitchMs).medianMs) }
                    }
                    if let m = r.rssMibAfterRuns {
                        Text(String(format: "memory footprint: %.1f MiB after load, %.1f MiB after the runs", r.rssMibAfterLoad ?? 0, m))
                            .font(.footnote)
                    }
                    if let fileURL {
                        ShareLink("Share JSON", item: fileURL)
                    }
                }
            }
            .navigationTitle("Benchmark")
            // The picker starts at a tagged model (the live screen's, else the first), and follows the
            // list when the bundle is read or the chosen model is gone.
            .onChange(of: store.models, initial: true) { _, models in
                if let c = chosen, models.contains(c) { return }
                chosen = store.selected ?? models.first
            }
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

    /// Loads the model with the chosen compute units; per run times the image -> input array
    /// preprocessing, the run (the array written into the input `MLMultiArray` and `prediction(from:)`,
    /// as the Android app times writing its input tensor and the run call) and the postprocessing
    /// (output feature values read, softmax, top-5) apart, on the bundled sample through the app preprocessing (the Android app's input
    /// too); records resident memory after loading and after the runs (the Classify tab released its
    /// model when it was left), and for a split artifact the cold expert-tail loads.
    /// Writes the JSON atomically to the temp folder.
    nonisolated static func measure(_ model: BundledModel, units: Units, runs: Int, warmup: Int) throws -> (BenchmarkReport, URL) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        let runner = try ModelRunner(model, computeUnits: units.computeUnits)
        let loadMs = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
        let rssLoad = Memory.footprintMib()
        guard let sample = SampleImage.load()?.rgb else { throw ModelMetadata.Invalid(message: "sample image missing from the bundle") }
        let crop = model.meta.cropFraction
        let t1 = DispatchTime.now().uptimeNanoseconds
        _ = try runner.predict(try runner.makeInput(Preprocess.toInput(sample, model.meta.input, cropFraction: crop)))
        let firstMs = Double(DispatchTime.now().uptimeNanoseconds - t1) / 1e6
        for _ in 0..<warmup { _ = try runner.predict(try runner.makeInput(Preprocess.toInput(sample, model.meta.input, cropFraction: crop))) }
        var pre: [Double] = [], times: [Double] = [], post: [Double] = []
        for _ in 0..<runs {
            // the spans of the Android app: image -> input array | array written into the MLMultiArray +
            // prediction | outputs read + top-5
            let a = DispatchTime.now().uptimeNanoseconds
            let values = Preprocess.toInput(sample, model.meta.input, cropFraction: crop)
            let b = DispatchTime.now().uptimeNanoseconds
            let raw = try runner.run(values)
            let c = DispatchTime.now().uptimeNanoseconds
            let (logits, experts) = try runner.read(raw)
            _ = Postprocess.decode(model.meta, logits: logits, expertProbs: experts)
            let d = DispatchTime.now().uptimeNanoseconds
            pre.append(Double(b - a) / 1e6); times.append(Double(c - b) / 1e6); post.append(Double(d - c) / 1e6)
        }
        let rssRuns = Memory.footprintMib()
        if let tails = runner.tails, let programs = model.meta.programs {  // up to 8 cold tail switches
            for e in programs.tails.compactMap(\.expert).filter({ !tails.resident.contains($0) }).prefix(8) { _ = try tails.get(e) }
        }
        var report = BenchmarkReport(artifact: model.meta.artifact, device: DeviceInfo.description, computeUnits: units.rawValue,
                                     threads: nil, warmup: warmup, runsMs: times, created: BenchmarkReport.isoNow())
        report.preprocessMs = pre
        report.postprocessMs = post
        report.loadMs = loadMs
        report.firstRunMs = firstMs
        report.rssMibAfterLoad = rssLoad
        report.rssMibAfterRuns = rssRuns
        report.expertLayout = model.meta.experts > 0 ? (runner.tails == nil ? "fused" : "split") : nil
        report.tailSwitchMs = runner.tails?.switchMs ?? []
        report.tailsCached = runner.tails?.capacity
        report.accelerator = "Core ML, compute units: \(units.title)"
        report.checkpointSha256 = model.meta.checkpointSha256
        let url = FileManager.default.temporaryDirectory.appendingPathComponent(report.fileName)
        try report.jsonData().write(to: url, options: .atomic)
        return (report, url)
    }
}

/// The app's resident memory as iOS counts it against the app (task_info phys_footprint), in MiB.
enum Memory {
    static func footprintMib() -> Double? {
        var info = task_vm_info_data_t()
        var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / MemoryLayout<natural_t>.size)
        let kr = withUnsafeMutablePointer(to: &info) {
            $0.withMemoryRebound(to: integer_t.self, capacity: Int(count)) { task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), $0, &count) }
        }
        return kr == KERN_SUCCESS ? Double(info.phys_footprint) / 1_048_576 : nil
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
