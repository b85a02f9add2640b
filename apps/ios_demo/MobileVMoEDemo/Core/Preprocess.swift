import Foundation

/// RGB pixels, row-major, 3 bytes per pixel. The platform layer (CGImage / CVPixelBuffer) fills it.
struct RGBImage: Equatable {
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
/// [invert colours] -> center-crop a square of crop_fraction of the short side -> bilinear resize (half-pixel centres, no antialias) ->
/// RGB / scale -> (x - mean) / std -> the declared layout. With preprocessing baked into the model the
/// app stops after the resize and feeds raw [0, 255] floats.
enum Preprocess {
    /// Side round(min(h, w) * cropFraction), halves up, at least 1 pixel.
    static func centerCropBox(height: Int, width: Int, cropFraction: Double = 1) -> CropBox {
        let short = min(height, width)
        let side = cropFraction == 1 ? short : min(short, max(1, Int((Double(short) * cropFraction + 0.5).rounded(.down))))
        return CropBox(top: (height - side) / 2, left: (width - side) / 2, side: side)
    }

    /// Source taps for one axis: i0, i1 and the weight of i1 (half-pixel centres, clamped at 0).
    private static func taps(out nOut: Int, in nIn: Int) -> (i0: [Int], i1: [Int], frac: [Double]) {
        let ratio = Double(nIn) / Double(nOut)
        var i0 = [Int](repeating: 0, count: nOut)
        var i1 = i0
        var frac = [Double](repeating: 0, count: nOut)
        for o in 0..<nOut {
            let src = max((Double(o) + 0.5) * ratio - 0.5, 0)
            let f = min(Int(src.rounded(.down)), nIn - 1)
            i0[o] = f
            i1[o] = min(f + 1, nIn - 1)
            frac[o] = src - Double(f)
        }
        return (i0, i1, frac)
    }

    /// Image -> flat float32 model input of shape input.shape, in input.layout. `invert` maps
    /// v -> 255 - v (dark ink for a light-on-dark model); the parity set passes cropFraction 1.
    static func toInput(_ image: RGBImage, _ input: ModelMetadata.Input, cropFraction: Double = 1,
                        invert: Bool = false) -> [Float] {
        let h = input.height, w = input.width
        let box = centerCropBox(height: image.height, width: image.width, cropFraction: cropFraction)
        let ty = taps(out: h, in: box.side), tx = taps(out: w, in: box.side)
        var out = [Float](repeating: 0, count: 3 * h * w)
        for y in 0..<h {
            let y0 = box.top + ty.i0[y], y1 = box.top + ty.i1[y], fy = ty.frac[y]
            for x in 0..<w {
                let x0 = box.left + tx.i0[x], x1 = box.left + tx.i1[x], fx = tx.frac[x]
                for c in 0..<3 {
                    let top = image.at(y0, x0, c) * (1 - fx) + image.at(y0, x1, c) * fx
                    let bot = image.at(y1, x0, c) * (1 - fx) + image.at(y1, x1, c) * fx
                    var v = top * (1 - fy) + bot * fy  // in [0, 255]
                    if invert { v = 255 - v }
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
