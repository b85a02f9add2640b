import AVFoundation
import SwiftUI

/// Back camera frames (BGRA, portrait) delivered to the frame handler on the session queue.
/// Every piece of session state (the handler, whether the camera is wanted, the configuration) lives on
/// that one serial queue, so `start()` and `stop()` take effect in the order they were called: a
/// `stop()` right after a `start()` leaves the camera off even when the permission answer arrives
/// later. Frames arriving while the previous one is still being classified are dropped by the handler.
final class CameraController: NSObject, ObservableObject, AVCaptureVideoDataOutputSampleBufferDelegate, @unchecked Sendable {
    let session = AVCaptureSession()
    @Published var denied = false
    private let queue = DispatchQueue(label: "camera.frames")
    // Only touched on `queue`:
    private var onFrame: (@Sendable (CVPixelBuffer) -> Void)?
    private var wanted = false
    private var configured = false

    /// The handler runs on the camera queue, never on the main actor: it must be `@Sendable` and hop to
    /// the main actor itself for anything that touches the UI.
    func setFrameHandler(_ handler: (@Sendable (CVPixelBuffer) -> Void)?) {
        queue.async { self.onFrame = handler }
    }

    func start() {
        queue.async { self.wanted = true }  // ordered before any later stop()
        AVCaptureDevice.requestAccess(for: .video) { granted in
            DispatchQueue.main.async { self.denied = !granted }
            guard granted else { return }
            self.queue.async {
                guard self.wanted else { return }  // stop() came first on the queue
                if !self.configured { self.configure() }
                if !self.session.isRunning { self.session.startRunning() }
            }
        }
    }

    func stop() {
        queue.async {
            self.wanted = false
            if self.session.isRunning { self.session.stopRunning() }
        }
    }

    private func configure() {
        session.beginConfiguration()
        session.sessionPreset = .vga640x480
        guard let device = AVCaptureDevice.default(.builtInWideAngleCamera, for: .video, position: .back),
              let input = try? AVCaptureDeviceInput(device: device), session.canAddInput(input) else {
            session.commitConfiguration()
            return
        }
        session.addInput(input)
        let output = AVCaptureVideoDataOutput()
        output.videoSettings = [kCVPixelBufferPixelFormatTypeKey as String: kCVPixelFormatType_32BGRA]
        output.alwaysDiscardsLateVideoFrames = true
        output.setSampleBufferDelegate(self, queue: queue)
        if session.canAddOutput(output) { session.addOutput(output) }
        if let conn = output.connection(with: .video), conn.isVideoRotationAngleSupported(90) {
            conn.videoRotationAngle = 90  // portrait
        }
        session.commitConfiguration()
        configured = true
    }

    func captureOutput(_ output: AVCaptureOutput, didOutput sampleBuffer: CMSampleBuffer, from connection: AVCaptureConnection) {
        guard let pb = CMSampleBufferGetImageBuffer(sampleBuffer) else { return }
        onFrame?(pb)
    }
}

/// The live preview layer in SwiftUI.
struct CameraPreview: UIViewRepresentable {
    let session: AVCaptureSession

    final class PreviewView: UIView {
        override class var layerClass: AnyClass { AVCaptureVideoPreviewLayer.self }
        var previewLayer: AVCaptureVideoPreviewLayer { layer as! AVCaptureVideoPreviewLayer }
    }

    func makeUIView(context: Context) -> PreviewView {
        let v = PreviewView()
        v.previewLayer.session = session
        v.previewLayer.videoGravity = .resizeAspectFill
        return v
    }

    func updateUIView(_ uiView: PreviewView, context: Context) {}
}
