package ai.mvmoe.demo

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.activity.enableEdgeToEdge
import androidx.compose.foundation.layout.safeDrawingPadding
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.padding
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Surface
import androidx.compose.material3.Tab
import androidx.compose.material3.PrimaryTabRow
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableIntStateOf
import androidx.compose.runtime.produceState
import androidx.compose.runtime.saveable.rememberSaveable
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.platform.LocalContext
import androidx.compose.ui.unit.dp
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext

/** Two tabs: live classification (camera or a picked photo) and the benchmark screen. */
class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        enableEdgeToEdge()  // the default from targetSdk 35 on: pad the content by the system bars instead
        super.onCreate(savedInstanceState)
        setContent { MaterialTheme { Surface(Modifier.fillMaxSize()) { App() } } }
    }
}

@Composable
fun App() {
    val context = LocalContext.current
    // Reading and parsing every .json in assets/mvmoe/ is file work: off the main thread, once.
    val listing by produceState<Pair<List<ModelAsset>, List<String>>?>(null) {
        value = withContext(Dispatchers.IO) { ModelAssets.list(context) }
    }
    var tab by rememberSaveable { mutableIntStateOf(0) }
    Column(Modifier.fillMaxSize().safeDrawingPadding()) {
        PrimaryTabRow(selectedTabIndex = tab) {
            Tab(selected = tab == 0, onClick = { tab = 0 }, text = { Text("Classify") })
            Tab(selected = tab == 1, onClick = { tab = 1 }, text = { Text("Benchmark") })
        }
        val found = listing
        if (found == null) {
            Text("Reading assets/mvmoe/…", modifier = Modifier.padding(8.dp))
        } else {
            val (models, problems) = found
            problems.forEach { Text(it, color = MaterialTheme.colorScheme.error, modifier = Modifier.padding(8.dp)) }
            if (models.isNotEmpty()) {
                when (tab) {
                    0 -> ClassifyScreen(models)
                    else -> BenchmarkScreen(models)
                }
            }
        }
    }
}
