import CoreGraphics
import CoreVideo
import ImageIO
import UIKit

/// Platform images -> RGBImage, the input of the platform-free preprocessing.
enum ImageConversion {
    /// Decodes encoded image data downsampled (ImageIO thumbnail, orientation applied) so that a
    /// 48-megapixel photo never lands in memory at full size. Call off the main thread.
    static func downsampled(_ data: Data, maxSide: Int = 1024) -> UIImage? {
        let opts = [kCGImageSourceShouldCache: false] as CFDictionary
        guard let src = CGImageSourceCreateWithData(data as CFData, opts) else { return nil }
        let thumb: [CFString: Any] = [kCGImageSourceCreateThumbnailFromImageAlways: true,
                                      kCGImageSourceCreateThumbnailWithTransform: true,
                                      kCGImageSourceShouldCacheImmediately: true,
                                      kCGImageSourceThumbnailMaxPixelSize: maxSide]
        guard let cg = CGImageSourceCreateThumbnailAtIndex(src, 0, thumb as CFDictionary) else { return nil }
        return UIImage(cgImage: cg)
    }

    /// Draws the image upright (applies UIImage orientation) into an RGBX buffer and drops X.
    static func rgb(from image: UIImage, maxSide: CGFloat = 1024) -> RGBImage? {
        let s = min(1, maxSide / max(image.size.width, image.size.height))
        let size = CGSize(width: (image.size.width * s).rounded(), height: (image.size.height * s).rounded())
        let format = UIGraphicsImageRendererFormat()
        format.scale = 1
        format.preferredRange = .standard  // 8-bit sRGB, not the extended range of wide-colour screens
        let upright = UIGraphicsImageRenderer(size: size, format: format).image { _ in
            image.draw(in: CGRect(origin: .zero, size: size))
        }
        guard let cg = upright.cgImage else { return nil }
        return rgb(from: cg)
    }

    static func rgb(from cg: CGImage) -> RGBImage? {
        let w = cg.width, h = cg.height
        var rgbx = [UInt8](repeating: 0, count: w * h * 4)
        let ok = rgbx.withUnsafeMutableBytes { buf -> Bool in
            guard let ctx = CGContext(data: buf.baseAddress, width: w, height: h, bitsPerComponent: 8, bytesPerRow: w * 4,
                                      space: CGColorSpace(name: CGColorSpace.sRGB) ?? CGColorSpaceCreateDeviceRGB(),
                                      bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return false }
            ctx.draw(cg, in: CGRect(x: 0, y: 0, width: w, height: h))
            return true
        }
        guard ok else { return nil }
        var rgb = [UInt8](repeating: 0, count: w * h * 3)
        for i in 0..<(w * h) {
            rgb[3 * i] = rgbx[4 * i]
            rgb[3 * i + 1] = rgbx[4 * i + 1]
            rgb[3 * i + 2] = rgbx[4 * i + 2]
        }
        return RGBImage(width: w, height: h, rgb: rgb)
    }

    /// A camera frame in kCVPixelFormatType_32BGRA -> RGBImage (the connection already rotates it upright).
    static func rgb(from pixelBuffer: CVPixelBuffer) -> RGBImage? {
        CVPixelBufferLockBaseAddress(pixelBuffer, .readOnly)
        defer { CVPixelBufferUnlockBaseAddress(pixelBuffer, .readOnly) }
        guard CVPixelBufferGetPixelFormatType(pixelBuffer) == kCVPixelFormatType_32BGRA,
              let base = CVPixelBufferGetBaseAddress(pixelBuffer) else { return nil }
        let w = CVPixelBufferGetWidth(pixelBuffer), h = CVPixelBufferGetHeight(pixelBuffer)
        let stride = CVPixelBufferGetBytesPerRow(pixelBuffer)
        let src = base.assumingMemoryBound(to: UInt8.self)
        var rgb = [UInt8](repeating: 0, count: w * h * 3)
        for y in 0..<h {
            for x in 0..<w {
                let p = y * stride + x * 4, q = (y * w + x) * 3
                rgb[q] = src[p + 2]
                rgb[q + 1] = src[p + 1]
                rgb[q + 2] = src[p]
            }
        }
        return RGBImage(width: w, height: h, rgb: rgb)
    }
}

/// The sample both apps bundle (Sample/digit.png, 64x64 RGB): the Sample button, the benchmark input
/// (as on Android) and the .json's sample check at load. Decoded with ImageIO straight into 8-bit
/// sRGB (no UIKit rendering), so its bytes are the PNG's, which the sample check verifies by SHA-256.
enum SampleImage {
    static func load() -> (ui: UIImage, rgb: RGBImage)? {
        guard let url = Bundle.main.url(forResource: "digit", withExtension: "png"),
              let src = CGImageSourceCreateWithURL(url as CFURL, nil),
              let cg = CGImageSourceCreateImageAtIndex(src, 0, nil),
              let rgb = ImageConversion.rgb(from: cg) else { return nil }
        return (UIImage(cgImage: cg), rgb)
    }
}
