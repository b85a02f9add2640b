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
                }
                .padding(.horizontal)

                results
                Spacer()
            }
            .navigationTitle(store.selected?.meta.model ?? "Mobile V-MoE")
            .toolbar { modelMenu }
        }
        .onAppear { setUp() }
        .onDisappear { camera.stop() }
        .onChange(of: store.selected) { _, _ in setUp() }
        .onChange(of: useCamera) { _, on in on ? camera.start() : camera.stop() }
        .onChange(of: photoItem) { _, item in Task { await loadPhoto(item) } }
    }

    @ViewBuilder private var results: some View {
        List {
            if let message = message ?? store.error {
                Text(message).foregroundStyle(.red).font(.footnote)
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

    private func setUp() {
        guard let model = store.selected else { return }
        do {
            runner = try ModelRunner(model, computeUnits: .all)
            message = nil
        } catch {
            message = "Cannot load \(model.meta.artifact): \(error.localizedDescription)"
        }
        rolling = RollingMedian(capacity: 20)
        camera.onFrame = { pb in
            guard let img = ImageConversion.rgb(from: pb) else { return }
            classify(img)
        }
        if useCamera { camera.start() }
    }

    private func loadPhoto(_ item: PhotosPickerItem?) async {
        guard let item, let data = try? await item.loadTransferable(type: Data.self), let ui = UIImage(data: data) else { return }
        useCamera = false
        photo = ui
        if let img = ImageConversion.rgb(from: ui) { classify(img) }
    }

    /// Runs off the main thread; drops the request if a prediction is still running.
    private func classify(_ img: RGBImage) {
        guard let runner else { return }
        DispatchQueue.main.async {
            guard !busy else { return }
            busy = true
            DispatchQueue.global(qos: .userInitiated).async {
                let result = Result { try runner.classify(img) }
                DispatchQueue.main.async {
                    busy = false
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
