import CoreVideo
import PhotosUI
import SwiftUI
import UIKit

/// Live screen: camera or a picked photo -> top-5 labels, the chosen expert and its superclass, and the
/// latency of each prediction with a rolling median of the last 20.
struct ClassifyView: View {
    @EnvironmentObject var store: ModelStore
    @StateObject private var camera = CameraController()
    @State private var runner: ModelRunner?
    @State private var prediction: Prediction?
    @State private var lastMs: Double?
    @State private var rolling = RollingMedian(capacity: 20)
    @State private var useCamera = true
    @State private var photoItem: PhotosPickerItem?
    @State private var photo: UIImage?
    @State private var message: String?
    @State private var busy = false
    @State private var invert = false
    @State private var status: String?
    /// False when the parity set or the sample check failed: the status is then shown in red.
    @State private var checksOK = true
    /// Set on the camera queue before any conversion, so frames are dropped while one is in flight.
    private let gate = FrameGate()

    var body: some View {
        NavigationStack {
            VStack(spacing: 12) {
                ZStack {
                    if useCamera {
                        CameraPreview(session: camera.session)
                    } else if let photo {
                        Image(uiImage: photo).resizable().scaledToFill()
                    } else {
                        Color.secondary.opacity(0.2)
                    }
                }
                .frame(height: 300)
                .clipped()

                HStack {
                    Picker("Source", selection: $useCamera) {
                        Text("Camera").tag(true)
                        Text("Photo").tag(false)
                    }
                    .pickerStyle(.segmented)
                    PhotosPicker("Choose", selection: $photoItem, matching: .images)
                    Button("Sample") { loadSample() }
                }
                .padding(.horizontal)

                results
                Spacer()
            }
            .navigationTitle(store.selected?.meta.model ?? "Mobile V-MoE")
            .toolbar { modelMenu }
        }
        // One load per appearance and per selection: SwiftUI starts this task when the view appears,
        // cancels it when the view disappears and restarts it when the selection changes, and a load
        // whose task was cancelled (or whose model is no longer the selected one) shows nothing.
        .task(id: store.selected) { await load(store.selected) }
        .onDisappear {
            // Release the live model while another tab is shown, so the benchmark measures (and its
            // phys_footprint counts) only the model it loads itself; the task above loads it again.
            camera.stop()
            camera.setFrameHandler(nil)
            runner = nil
        }
        .onChange(of: useCamera) { _, on in on ? camera.start() : camera.stop() }
        .onChange(of: photoItem) { _, item in Task { await loadPhoto(item) } }
    }

    @ViewBuilder private var results: some View {
        List {
            if let message = message ?? store.error {
                Text(message).foregroundStyle(.red).font(.footnote)
            }
            if camera.denied && useCamera {
                Text("Camera access is off: allow it in Settings > Privacy > Camera, or choose a photo.")
                    .foregroundStyle(.red).font(.footnote)
            }
            if let status { Text(status).font(.footnote).foregroundStyle(checksOK ? Color.primary : Color.red) }
            if store.selected?.meta.preprocessing?.polarity == "light-on-dark" {
                Section {
                    Text("This model expects light digits on a dark ground.").font(.footnote)
                    Toggle("Invert colours (dark ink on paper)", isOn: $invert)
                }
            }
            if let p = prediction {
                Section("Top 5") {
                    ForEach(p.top, id: \.index) { r in
                        HStack {
                            Text(r.label)
                            Spacer()
                            Text(String(format: "%.1f%%", r.prob * 100)).monospacedDigit()
                        }
                    }
                }
                if let e = p.expert {
                    Section("Routing") {
                        Text("Expert \(e) (p = \(String(format: "%.2f", p.expertProb ?? 0)))")
                        Text("Superclass: \(p.superclass ?? "sc\(e)")")
                    }
                }
            }
            if let lastMs {
                Section("Latency") {
                    Text(String(format: "%.2f ms (median of last %d: %.2f ms)", lastMs, rolling.window.count, rolling.median))
                        .monospacedDigit()
                }
            }
        }
    }

    @ToolbarContentBuilder private var modelMenu: some ToolbarContent {
        ToolbarItem(placement: .topBarTrailing) {
            Menu("Model") {
                ForEach(store.models) { m in
                    Button(m.meta.artifact) { store.selected = m }
                }
            }
        }
    }

    /// Compiles/loads the model off the main thread, then shows load and first-inference time and the
    /// parity set. The result is dropped when the view left or the selection changed meanwhile.
    private func load(_ model: BundledModel?) async {
        runner = nil
        prediction = nil
        guard let model else { return }
        status = "loading \(model.meta.artifact)…"
        rolling = RollingMedian(capacity: 20)
        camera.setFrameHandler(ClassifyView.frameHandler(gate: gate) { img in classify(img, gated: true) })
        if useCamera { camera.start() }
        let (result, text, passed) = await Task.detached(priority: .userInitiated) { () -> (Result<ModelRunner, Error>, String, Bool) in
            let t0 = DispatchTime.now().uptimeNanoseconds
            let result = Result { try ModelRunner(model, computeUnits: .all) }
            let loadMs = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
            var line = "", ok = true
            if case .success(let r) = result {
                let t1 = DispatchTime.now().uptimeNanoseconds
                let first = (try? r.predict(r.makeInput([Float](repeating: 0, count: model.meta.input.shape.reduce(1, *))))) != nil
                let firstMs = Double(DispatchTime.now().uptimeNanoseconds - t1) / 1e6
                let parity = r.paritySummary()
                ok = parity.ok && first
                line = String(format: "Core ML (compute units: all) · load %.0f ms, first inference %.1f ms%@\n", loadMs, firstMs,
                              first ? "" : " (failed)") + parity.text
                if let sample = SampleImage.load()?.rgb, let text = r.sampleSummary(sample) {
                    line += "\n" + text
                    ok = ok && !text.hasSuffix("FAILED")
                }
                if #available(iOS 17.4, *), let plan = await r.computePlanSummary() { line += "\n" + plan }
            }
            return (result, line, ok)
        }.value
        // The view disappeared (task cancelled) or another model was picked while this one loaded:
        // its runner is released here, never shown under another model's title or kept behind the benchmark.
        guard !Task.isCancelled, store.selected == model else { return }
        switch result {
        case .success(let r):
            runner = r
            message = nil
            status = text
            checksOK = passed
        case .failure(let error):
            message = "Cannot load \(model.meta.artifact): \(error.localizedDescription)"
            status = nil
        }
    }

    /// The camera's frame handler, made outside the main actor: it runs on the camera queue, drops a
    /// frame before converting it while one is in flight, and hands the converted image to `deliver`
    /// on the main actor.
    nonisolated private static func frameHandler(gate: FrameGate,
                                                 deliver: @escaping @MainActor (RGBImage) -> Void) -> @Sendable (CVPixelBuffer) -> Void {
        let box = MainActorBox(deliver)
        return { pb in
            guard gate.enter() else { return }  // drop the frame before converting it
            guard let img = ImageConversion.rgb(from: pb) else { gate.leave(); return }
            Task { @MainActor in box.value(img) }
        }
    }

    /// The bundled sample (Sample/digit.png: a light-on-dark digit 3, as the digits models expect).
    private func loadSample() {
        guard let (ui, img) = SampleImage.load() else { message = "sample image missing from the bundle"; return }
        useCamera = false
        photo = ui
        classify(img)
    }

    /// Decodes the picked photo downsampled and converts it off the main thread.
    private func loadPhoto(_ item: PhotosPickerItem?) async {
        guard let item, let data = try? await item.loadTransferable(type: Data.self) else { return }
        let decoded = await Task.detached(priority: .userInitiated) { () -> (UIImage, RGBImage?)? in
            guard let ui = ImageConversion.downsampled(data) else { return nil }
            return (ui, ImageConversion.rgb(from: ui))
        }.value
        guard let (ui, img) = decoded else { message = "cannot decode the picked image"; return }
        useCamera = false
        photo = ui
        if let img { classify(img) }
    }

    /// Runs off the main thread; drops the request if a prediction is still running.
    private func classify(_ img: RGBImage, gated: Bool = false) {
        let gate = self.gate
        DispatchQueue.main.async {
            guard let runner, !busy else { if gated { gate.leave() }; return }
            busy = true
            let invert = self.invert
            DispatchQueue.global(qos: .userInitiated).async {
                let result = Result { try runner.classify(img, invert: invert) }
                DispatchQueue.main.async {
                    busy = false
                    if gated { gate.leave() }
                    switch result {
                    case .success(let (p, ms)):
                        prediction = p
                        lastMs = ms
                        _ = rolling.add(ms)
                    case .failure(let error):
                        message = error.localizedDescription
                    }
                }
            }
        }
    }
}

/// A thread-safe "one frame in flight" flag for the camera queue.
final class FrameGate: @unchecked Sendable {
    private let lock = NSLock()
    private var inFlight = false

    func enter() -> Bool {
        lock.lock(); defer { lock.unlock() }
        if inFlight { return false }
        inFlight = true
        return true
    }

    func leave() {
        lock.lock(); inFlight = false; lock.unlock()
    }
}

/// Carries a main-actor closure through a `@Sendable` one; it is only ever called on the main actor.
private final class MainActorBox: @unchecked Sendable {
    let value: @MainActor (RGBImage) -> Void
    init(_ value: @escaping @MainActor (RGBImage) -> Void) { self.value = value }
}
