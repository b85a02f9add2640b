plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
    alias(libs.plugins.kotlin.compose)
}

android {
    namespace = "ai.mvmoe.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "ai.mvmoe.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "1.0"
        // The runtimes bundled in the APK: the app refuses artifacts whose .json needs newer ones.
        buildConfigField("String", "EXECUTORCH_VERSION", "\"${libs.versions.executorch.get()}\"")
        buildConfigField("String", "LITERT_VERSION", "\"${libs.versions.litert.get()}\"")
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            signingConfig = signingConfigs.getByName("debug") // a demo: installable release build without a keystore
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
    buildFeatures { compose = true; buildConfig = true }
    // Models are memory-mapped from the APK by LiteRT: keep them uncompressed.
    androidResources { noCompress += listOf("tflite", "pte") }
}

// The platform-free logic (ai.mvmoe.demo.core) is tested on the JVM against apps/golden/golden.json.
tasks.withType<Test>().configureEach {
    systemProperty("mvmoe.golden", rootProject.file("../golden/golden.json").absolutePath)
}

dependencies {
    implementation(libs.androidx.activity.compose)
    implementation(libs.androidx.lifecycle.runtime)
    implementation(platform(libs.compose.bom))
    implementation(libs.compose.ui)
    implementation(libs.compose.material3)
    implementation(libs.camera.core)
    implementation(libs.camera.camera2)
    implementation(libs.camera.lifecycle)
    implementation(libs.camera.view)
    implementation(libs.litert)
    implementation(libs.litert.gpu)
    implementation(libs.executorch)
    testImplementation(libs.junit)
}
