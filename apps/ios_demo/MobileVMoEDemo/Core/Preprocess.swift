import Foundation

/// RGB pixels, row-major, 3 bytes per pixel. The platform layer (CGImage / CVPixelBuffer) fills it.
struct RGBImage: Equatable, Sendable {
    let width: Int
    let height: Int
    let rgb: [UInt8]

    init(width: Int, height: Int, rgb: [UInt8]) {
        precondition(width > 0 && height > 0 && rgb.count == width * height * 3, "rgb must hold width*height*3 bytes")
        self.width = width
        self.height = height
        self.rgb = rgb
    }

    /// Channel c (0 = R, 1 = G, 2 = B) of pixel (y, x) as 0...255.
    @inline(__always) func at(_ y: Int, _ x: Int, _ c: Int) -> Double { Double(rgb[(y * width + x) * 3 + c]) }
}

/// The largest centred square; odd remainders leave the extra row/column at the bottom/right.
struct CropBox: Equatable {
    let top: Int
    let left: Int
    let side: Int
}

/// App preprocessing, identical to apps/golden/make_golden.py and the Kotlin `Preprocess` (docs/apps.md):
/// [invert colours] -> center-crop a square of crop_fraction of the short side -> antialiased bilinear resize
/// (half-pixel centres; torch's F.interpolate(antialias=True), the eval transform's resampling) ->
/// RGB / scale -> (x - mean) / std -> the declared layout. With preprocessing baked into the model the
/// app stops after the resize and feeds raw [0, 255] floats.
enum Preprocess {
    /// Side round(min(h, w) * cropFraction), halves up, at least 1 pixel.
    static func centerCropBox(height: Int, width: Int, cropFraction: Double = 1) -> CropBox {
        let short = min(height, width)
        let side = cropFraction == 1 ? short : min(short, max(1, Int((Double(short) * cropFraction + 0.5).rounded(.down))))
        return CropBox(top: (height - side) / 2, left: (width - side) / 2, side: side)
    }

    /// Antialiased bilinear (triangle filter) taps for one axis, as torch's _upsample_bilinear2d_aa and the
    /// Kotlin `Preprocess.Taps`: scale = nIn / nOut, support = max(scale, 1), centre = scale * (o + 0.5),
    /// source pixels [Int(centre - support + 0.5), Int(centre + support + 0.5)) clipped to the axis,
    /// weight max(0, 1 - |(j - centre + 0.5) / support|), normalised to sum 1.
    static func taps(out nOut: Int, in nIn: Int) -> (start: [Int], weights: [[Double]]) {
        let scale = Double(nIn) / Double(nOut)
        let support = max(scale, 1)
        var start = [Int](repeating: 0, count: nOut)
        var weights: [[Double]] = []
        for o in 0..<nOut {
            let centre = scale * (Double(o) + 0.5)
            let lo = max(Int(centre - support + 0.5), 0)  // Int() truncates toward zero, like C
            let hi = min(Int(centre + support + 0.5), nIn)
            var w = (lo..<hi).map { j in max(0, 1 - abs((Double(j) - centre + 0.5) / support)) }
            let total = w.reduce(0, +)
            if total > 0 { w = w.map { $0 / total } }
            start[o] = lo
            weights.append(w)
        }
        return (start, weights)
    }

    /// Image -> flat float32 model input of shape input.shape, in input.layout. `invert` maps
    /// v -> 255 - v (dark ink for a light-on-dark model); the parity set passes cropFraction 1.
    static func toInput(_ image: RGBImage, _ input: ModelMetadata.Input, cropFraction: Double = 1,
                        invert: Bool = false) -> [Float] {
        let h = input.height, w = input.width
        let box = centerCropBox(height: image.height, width: image.width, cropFraction: cropFraction)
        let ty = taps(out: h, in: box.side), tx = taps(out: w, in: box.side)
        // horizontal pass over the crop's rows: (side, w, 3), then vertical per output pixel
        var rows = [Double](repeating: 0, count: box.side * w * 3)
        for r in 0..<box.side {
            for x in 0..<w {
                let wx = tx.weights[x]
                for c in 0..<3 {
                    var acc = 0.0
                    for j in 0..<wx.count { acc += wx[j] * image.at(box.top + r, box.left + tx.start[x] + j, c) }
                    rows[(r * w + x) * 3 + c] = acc
                }
            }
        }
        var out = [Float](repeating: 0, count: 3 * h * w)
        for y in 0..<h {
            let wy = ty.weights[y]
            for x in 0..<w {
                for c in 0..<3 {
                    var v = 0.0
                    for i in 0..<wy.count { v += wy[i] * rows[((ty.start[y] + i) * w + x) * 3 + c] }  // in [0, 255]
                    if invert { v = 255 - v }  // weights sum to 1: the same as inverting the source bytes
                    if !input.preprocessingBakedIn {
                        v = (v / Double(input.scale) - Double(input.mean[c])) / Double(input.std[c])
                    }
                    let idx = input.layout == .nchw ? (c * h + y) * w + x : (y * w + x) * 3 + c
                    out[idx] = Float(v)
                }
            }
        }
        return out
    }
}
