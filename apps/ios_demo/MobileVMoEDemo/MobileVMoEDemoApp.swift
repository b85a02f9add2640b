import SwiftUI

/// Two tabs: live classification (camera or photo) and the benchmark screen.
@main
struct MobileVMoEDemoApp: App {
    @StateObject private var store = ModelStore()

    var body: some Scene {
        WindowGroup {
            TabView {
                ClassifyView()
                    .tabItem { Label("Classify", systemImage: "camera.viewfinder") }
                BenchmarkView()
                    .tabItem { Label("Benchmark", systemImage: "speedometer") }
            }
            .environmentObject(store)
            .task { store.loadBundledModels() }
        }
    }
}
