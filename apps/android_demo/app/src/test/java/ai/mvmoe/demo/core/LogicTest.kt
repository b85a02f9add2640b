package ai.mvmoe.demo.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test

/** Hand-worked cases for the pieces the golden file does not pin down on its own. */
class LogicTest {
    private fun spec(h: Int, w: Int, layout: Layout, baked: Boolean = false) = InputSpec(
        "image", if (layout == Layout.NCHW) listOf(1, 3, h, w) else listOf(1, h, w, 3), layout,
        floatArrayOf(0.5f, 0.5f, 0.5f), floatArrayOf(0.25f, 0.25f, 0.25f), 255f, baked)

    @Test
    fun bilinearTwoPixelsToFourByHand() {
        // 1x2 image cropped to its 1x1 centre would lose a pixel, so use a 2x2 with R = [[0, 100], [200, 40]].
        val rgb = byteArrayOf(0, 0, 0, 100, 0, 0, 200.toByte(), 0, 0, 40, 0, 0)
        val img = RgbImage(2, 2, rgb)
        val out = Preprocess.toInput(img, spec(4, 4, Layout.NCHW, baked = true))
        // Output x=1 samples source 0.25: row 0 -> 0*0.75 + 100*0.25 = 25; x=0 samples -0.25 -> clamped to 0.
        assertEquals(0f, out[0], 1e-5f)
        assertEquals(25f, out[1], 1e-5f)
        assertEquals(75f, out[2], 1e-5f)
        assertEquals(100f, out[3], 1e-5f)  // source 1.25 -> i0 = 1, i1 clamped to 1
        // (y=1, x=1): rows mix 0.75 / 0.25: (25) * 0.75 + (200*0.75 + 40*0.25 = 160) * 0.25 = 58.75
        assertEquals(58.75f, out[5], 1e-4f)
        // G and B channels stay 0.
        assertTrue(out.sliceArray(16 until 48).all { it == 0f })
    }

    @Test
    fun normaliseAndLayout() {
        // One 1x1 pixel (R, G, B) = (255, 0, 51): (x/255 - 0.5) / 0.25 = 2, -2, -1.2.
        val img = RgbImage(1, 1, byteArrayOf(255.toByte(), 0, 51))
        assertArrayEquals(floatArrayOf(2f, -2f, -1.2f), Preprocess.toInput(img, spec(1, 1, Layout.NHWC)), 1e-6f)
        val big = Preprocess.toInput(img, spec(2, 1, Layout.NCHW))
        assertArrayEquals(floatArrayOf(2f, 2f, -2f, -2f, -1.2f, -1.2f), big, 1e-6f)  // channel planes
        val nhwc = Preprocess.toInput(img, spec(2, 1, Layout.NHWC))
        assertArrayEquals(floatArrayOf(2f, -2f, -1.2f, 2f, -2f, -1.2f), nhwc, 1e-6f)  // interleaved
    }

    @Test
    fun argbUnpacking() {
        val img = RgbImage.fromArgb(1, 1, intArrayOf(0xFF102030.toInt()))
        assertEquals(listOf(0x10, 0x20, 0x30), (0..2).map { img.at(0, 0, it) })
    }

    @Test
    fun softmaxByHand() {
        // ln 3 vs 0: probabilities 3/4 and 1/4.
        val p = Postprocess.softmax(floatArrayOf(Math.log(3.0).toFloat(), 0f))
        assertArrayEquals(floatArrayOf(0.75f, 0.25f), p, 1e-6f)
        assertArrayEquals(intArrayOf(1, 3, 0), Postprocess.topK(floatArrayOf(0.1f, 0.4f, 0f, 0.4f), 3))
    }

    @Test
    fun percentileByHand() {
        // n = 4 sorted [1, 2, 3, 4]: median rank 1.5 -> 2.5; p90 rank 2.7 -> 3.7.
        val s = BenchStats.of(listOf(4.0, 1.0, 3.0, 2.0))
        assertEquals(2.5, s.medianMs, 1e-12)
        assertEquals(3.7, s.p90Ms, 1e-12)
        val r = RollingMedian(3)
        listOf(10.0, 1.0, 2.0, 3.0).forEach { r.add(it) }
        assertEquals(2.0, r.median, 0.0)  // window [1, 2, 3]
    }

    @Test
    fun jsonRoundTripAndErrors() {
        val v = Json.parse("""{"a": [1, -2.5e-3, true, null], "b": "x\"\\\u00e9\n", "c": {}}""") as Map<*, *>
        assertEquals(listOf(1.0, -0.0025, true, null), v["a"])
        assertEquals("x\"\\\u00e9\n", v["b"])
        assertEquals(v, Json.parse(Json.write(v, indent = 2)))
        for (bad in listOf("{", "[1,]", "{\"a\" 1}", "\"abc", "1 2", "tru", "{\"a\":1,}")) {
            assertThrows(bad, JsonException::class.java) { Json.parse(bad) }
        }
    }

    @Test
    fun metadataErrorsNameTheProblem() {
        val e = assertThrows(MetadataException::class.java) { ModelMetadata.parse("""{"input": {"shape": [1, 3, 8, 8], "layout": "CHW"}}""") }
        assertTrue(e.message!!, e.message!!.contains("CHW"))
        val e2 = assertThrows(MetadataException::class.java) { ModelMetadata.parse("[]") }
        assertTrue(e2.message!!, e2.message!!.contains("object"))
    }

    @Test
    fun benchmarkJsonHasContractKeys() {
        val r = BenchmarkReport("m_tflite_fp32.tflite", "android_demo", "Pixel 8 (Android 15)", "litert", "gpu", 4, 10,
            listOf(2.0, 1.0), "2026-11-23T09:00:00Z")
        val m = Json.parse(r.toJson()) as Map<*, *>
        assertEquals("mvmoe-app-benchmark", m["format"])
        assertEquals(1.0, m["version"])
        assertEquals(listOf(2.0, 1.0), m["runs_ms"])
        assertEquals("bench_m_tflite_fp32_litert_gpu.json", r.fileName())
        assertThrows(IllegalArgumentException::class.java) { r.copy(computeUnits = "tpu") }
    }
}
